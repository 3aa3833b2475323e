"""kill -9 at many moments of a run, resume each, and check the result is bit-identical to an uninterrupted run.

    python benchmarks/kill_resume.py [--points 10] [--rounds 6]

A reference run finishes uninterrupted. Then, for each kill point, a fresh run (same config, same seed) is
started as a real process (`python -m fedmtl.cli run`), killed with SIGKILL once its run folder shows a given
amount of progress (after k checkpoints, or while a checkpoint's temporary file exists: mid-write), and resumed
with `--resume` until it finishes. The final parameters (the newest checkpoint) and metrics.jsonl's records are
compared with the reference. Prints a table and writes ``benchmarks/results/kill_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

CONFIG = """
seed: 3
data: {source: {name: mnist1d, tasks: [digit, parity], num_samples: 1500}, num_clients: 12}
model: {name: hard_sharing, trunk: {name: mlp, hidden: [64]}}
client: {epochs: 2, batch_size: 16}
server: {rounds: ROUNDS, clients_per_round: 6}
evaluation: {every: 2}
output: {plots: false, keep_checkpoints: 3}
"""


def _cmd(config: Path, out: Path, name: str, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "fedmtl.cli", "run", "--resume", str(out / name), "--quiet"]
    return [sys.executable, "-m", "fedmtl.cli", "run", str(config), "--set", f"output.dir={out}", "--set", f"output.name={name}", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def final_state(run_dir: Path) -> tuple[dict, list[dict]]:
    """The newest checkpoint's tensors and the metrics records without wall times."""
    from safetensors.torch import load_file

    ckpts = sorted((run_dir / "checkpoints").glob("round-*.safetensors"))
    tensors = load_file(str(ckpts[-1]))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for key in ("elapsed", "round_seconds", "seconds"):
            r.pop(key, None)
    return tensors, records


def killed_run(config: Path, out: Path, name: str, point: str, limit: float) -> dict:
    """Start, kill -9 at ``point`` ("after:K" checkpoints or "mid:K": during the K-th checkpoint's write), resume to the end."""
    run_dir = out / name
    kind, k = point.split(":")
    proc = subprocess.Popen(_cmd(config, out, name, False), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + limit
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        folder = run_dir / "checkpoints"
        # the newest checkpoint's round (older ones are pruned, so count by name, not by files)
        done = max((int(p.stem.split("-")[1]) for p in folder.glob("round-*.safetensors")), default=0) if folder.is_dir() else 0
        writing = folder.is_dir() and any(p.name.startswith(".") and ".tmp-" in p.name for p in folder.iterdir())
        if (kind == "after" and done >= int(k)) or (kind == "mid" and writing and done >= int(k) - 1):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    proc.wait()
    resumes = 0
    while not (run_dir / "summary.json").exists() and resumes < 5:
        resumes += 1
        subprocess.run(_cmd(config, out, name, True), env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=limit)
    return {"point": point, "killed": killed, "resumes": resumes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(HERE / "results" / "kill_resume.json"))
    ns = ap.parse_args()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    config = work / "config.yaml"
    config.write_text(CONFIG.replace("ROUNDS", str(ns.rounds)))
    subprocess.run(_cmd(config, work, "reference", False), env=_env(), check=True, timeout=600)
    ref_tensors, ref_records = final_state(work / "reference")
    points = [f"{'mid' if i % 2 else 'after'}:{1 + (i // 2) % (ns.rounds - 1)}" for i in range(ns.points)]
    rows = []
    for i, point in enumerate(points):
        res = killed_run(config, work, f"kill{i}", point, 600)
        tensors, records = final_state(work / f"kill{i}")
        res["identical_params"] = tensors.keys() == ref_tensors.keys() and all(bool((tensors[k] == ref_tensors[k]).all()) for k in tensors)
        res["identical_metrics"] = records == ref_records
        rows.append(res)
        print(res, flush=True)
    Path(ns.out).write_text(json.dumps({"rounds": ns.rounds, "runs": rows}, indent=2))
    print("| kill point | killed | resumes | parameters bit-identical | metrics identical |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['point']} | {r['killed']} | {r['resumes']} | {r['identical_params']} | {r['identical_metrics']} |")


if __name__ == "__main__":
    main()
