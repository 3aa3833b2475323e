"""Flower deployment benchmark: bytes on the wire per round and rounds per minute, real processes on 127.0.0.1.

For each setting it starts a SuperLink and N SuperNodes (``fedmtl.integrations.flower.launch``),
submits the fedmtl app with ``flwr run`` and reads the run's metrics.jsonl:

* ``wire_bytes_down`` / ``wire_bytes_up``: the size of the Flower messages of a round as Flower
  serialises them (the message and every nested record and array, ``InflatableObject.deflate``),
  summed over the cohort; ``bytes_*`` are fedmtl's payload bytes inside them.
* rounds per minute: 60 / mean round time (from sending a round's messages to having aggregated
  and evaluated it), with registration excluded; the first round (data partition built on each node) is
  reported separately.

Usage::

    python benchmarks/flower_deploy.py                         # 3 and 10 SuperNodes, fp32, fresh vs warm ClientApps
    python benchmarks/flower_deploy.py --nodes 3 --codec "[{name: topk, fraction: 0.01}, {name: int8}, {name: zstd}]" --append

    python benchmarks/flower_deploy.py --nodes 3 --clientapp warm-poll --rounds 6 --comm examples/configs/compressed.yaml --append

``--codec`` is a YAML list used for ``comm.uplink`` (the codec chain); codecs must exist in the
installed fedmtl. ``--comm`` replaces the whole ``comm`` section (both directions): a YAML mapping, or the
path of an experiment config whose ``comm`` section is taken (the recommended chains:
``examples/configs/compressed.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedmtl.integrations.flower.launch import LocalFederation, copy_app, wait_until  # noqa: E402

APP = ROOT / "examples" / "flower_app"


def experiment(nodes: int, rounds: int, codec: list | dict | None, secagg: bool = False) -> dict:
    """The benchmark's experiment; ``codec``: the uplink chain (a list) or the whole ``comm`` section (a dict)."""
    tasks = ["digit", "parity"]
    assignment = {i: (tasks if i % 3 == 0 else [tasks[i % 3 - 1]]) for i in range(nodes)}
    cfg = {
        "seed": 0,
        "data": {
            "source": {"name": "mnist1d", "num_samples": 4000, "tasks": tasks},
            "num_clients": nodes,
            "partition": {"name": "iid"},
            "task_assignment": {"name": "explicit", "clients": assignment},
        },
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [128, 128]}},
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
        "server": {"rounds": rounds},
        "evaluation": {"every": 1, "personalized": False},
        "runtime": {"threads": 1},
        "output": {"plots": False},
    }
    if codec is not None:
        cfg["comm"] = dict(codec) if isinstance(codec, dict) else {"uplink": codec}
    if secagg:  # the update's coordinates stay within [-1, 1] in this model's rounds
        cfg["privacy"] = {"secure_aggregation": {}}
    return cfg


def run_one(
    nodes: int, rounds: int, codec: list | dict | None, tls: bool, workdir: Path, timeout: float, mode: str, secagg: bool = False
) -> dict:
    app = copy_app(APP, workdir / "app", yaml.safe_dump(experiment(nodes, rounds, codec, secagg)))
    run_dir = workdir / "runs" / "flower"
    t0 = time.monotonic()
    with LocalFederation(workdir / "fed", num_nodes=nodes, tls=tls, time_limit=4 * timeout, **MODES[mode]) as fed:
        run_id = fed.submit(
            app,
            {
                "output-dir": str(workdir / "runs"),
                "min-nodes": nodes,
                "min-replies": nodes,
                "round-timeout": timeout,
                "wait-for-nodes": timeout,
            },
        )
        if not wait_until((run_dir / "summary.json").exists, timeout, workdir):
            raise RuntimeError(f"run wrote nothing for {timeout:.0f} s:\n{fed.run_log(run_id)[-4000:]}")
    wall = time.monotonic() - t0
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [h["round_seconds"] for h in history[1:]] or [history[0]["round_seconds"]]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "nodes": nodes,
        "clientapp": mode,
        "rounds": rounds,
        "tls": tls,
        "secagg": secagg,
        "codec": codec.get("uplink", [{"name": "identity"}]) if isinstance(codec, dict) else codec or [{"name": "identity"}],
        "comm": codec if isinstance(codec, dict) else {"uplink": codec or [{"name": "identity"}]},
        "payload_bytes_down_per_round": statistics.mean(h["bytes_down"] for h in history),
        "payload_bytes_up_per_round": statistics.mean(h["bytes_up"] for h in history),
        "wire_bytes_down_per_round": statistics.mean(h["wire_bytes_down"] for h in history),
        "wire_bytes_up_per_round": statistics.mean(h["wire_bytes_up"] for h in history),
        # after the first round: a compressed downlink then sends differences to the nodes' copies
        "wire_bytes_down_per_round_after_first": statistics.mean(h["wire_bytes_down"] for h in history[1:] or history),
        "payload_bytes_down_per_round_after_first": statistics.mean(h["bytes_down"] for h in history[1:] or history),
        "first_round_seconds": history[0]["round_seconds"],
        "round_seconds_mean": statistics.mean(steady),
        "rounds_per_minute": 60.0 / statistics.mean(steady),
        "wall_seconds_incl_startup": wall,
        "final_global": summary["final_global"],
    }


#: how the SuperNodes run the ClientApp: LocalFederation's arguments and the table's words
MODES = {"fresh": {"warm": False}, "warm": {"warm": True}, "warm-poll": {"warm": True, "idle_poll": 0.2}}
CLIENTAPP = {
    "fresh": "fresh process per message (Flower's default)",
    "warm": "one warm process per node",
    "warm-poll": "warm, SuperNode idle wait 0.2 s (--idle-poll)",
}


def _chains(row: dict) -> str:
    """The row's chains: the uplink's, and (when set) the downlink's and its differences' (Δ)."""
    comm = row.get("comm") or {"uplink": row["codec"]}
    names = lambda chain: "+".join(c["name"] + (" (bitmap)" if c.get("index_coding") == "bitmap" else "") for c in chain)  # noqa: E731
    out = names(comm.get("uplink") or [{"name": "identity"}])
    if comm.get("downlink") or comm.get("downlink_delta"):
        out += f" / down {names(comm.get('downlink') or [{'name': 'identity'}])}"
        out += f", Δ {names(comm['downlink_delta'])}" if comm.get("downlink_delta") else ""
    return out


def table(rows: list[dict]) -> str:
    head = "| SuperNodes | ClientApp | codecs (up / down) | rounds | TLS | secure aggregation | wire down / round | wire down / round after the first | payload down / round | wire up / round | payload up / round | first round s | s / round | rounds / min |\n"
    head += "|---:|---|---|---:|:-:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for r in rows:
        later = r.get("wire_bytes_down_per_round_after_first")
        head += (
            f"| {r['nodes']} | {CLIENTAPP[r.get('clientapp', 'fresh')]} | {_chains(r)} | {r['rounds']} | {'yes' if r['tls'] else 'no'} | "
            f"{'yes' if r.get('secagg') else 'no'} | {r['wire_bytes_down_per_round'] / 1e3:.1f} kB | "
            f"{f'{later / 1e3:.1f} kB' if later is not None else '—'} | {r['payload_bytes_down_per_round'] / 1e3:.1f} kB | "
            f"{r['wire_bytes_up_per_round'] / 1e3:.1f} kB | {r['payload_bytes_up_per_round'] / 1e3:.1f} kB | "
            f"{r['first_round_seconds']:.1f} | {r['round_seconds_mean']:.1f} | {r['rounds_per_minute']:.1f} |\n"
        )
    return head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument(
        "--codec", type=str, default=None, help="YAML list: the uplink codec chain (default: fp32 identity)"
    )
    ap.add_argument(
        "--comm", type=str, default=None, help="YAML mapping, or an experiment config's path: the whole comm section (replaces --codec)"
    )
    ap.add_argument("--tls", action="store_true")
    ap.add_argument(
        "--secagg", nargs="+", choices=["off", "on"], default=["off"], help="privacy.secure_aggregation off and/or on"
    )
    ap.add_argument(
        "--clientapp",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="fresh: Flower's default isolation (a new flwr-clientapp process per message); "
        "warm: --isolation process with one fedmtl worker per SuperNode (fedmtl.integrations.flower.worker); "
        "warm-poll: warm, and the SuperNodes started through fedmtl.integrations.flower.supernode --idle-poll 0.2",
    )
    ap.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds without anything written before a run is failed")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flower_deploy.json")
    args = ap.parse_args()
    codec: list | dict | None = yaml.safe_load(args.codec) if args.codec else None
    if args.comm:
        codec = yaml.safe_load(Path(args.comm).read_text())["comm"] if Path(args.comm).is_file() else yaml.safe_load(args.comm)
    load_start = os.getloadavg()
    rows = []
    for n in args.nodes:
        for mode in args.clientapp:
            for sa in args.secagg:
                with tempfile.TemporaryDirectory(prefix=f"fedmtl-flower-bench-{n}-{mode}-") as tmp:
                    row = run_one(n, args.rounds, codec, args.tls, Path(tmp), args.timeout, mode, sa == "on")
                print(json.dumps(row), flush=True)
                rows.append(row)
    import flwr
    import torch

    result = {
        "benchmark": "flower_deploy",
        "machine": {
            "load_average_start_end": [load_start[0], os.getloadavg()[0]],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "flwr": flwr.__version__,
        },
        "note": "loopback, all processes on one machine shared with other work; 'fresh': Flower's default subprocess "
        "isolation (a fresh Python process per message); 'warm': --isolation process with one long-running fedmtl "
        "ClientApp worker per SuperNode; 'warm-poll': warm, SuperNodes' idle wait capped at 0.2 s (Flower's is a fixed 3 s)",
        "rows": rows,
    }
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
        result["rows"] = previous.get("rows", []) + rows
        result["machine_per_run"] = previous.get("machine_per_run", [previous.get("machine")]) + [
            result["machine"]
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    md = table(result["rows"])
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
