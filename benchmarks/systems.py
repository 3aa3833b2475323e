"""Time to accuracy on a simulated clock: synchronous FedAvg, synchronous with a deadline and
over-selection, and FedBuff, among the same stragglers.

Workload: MNIST-1D (4,000 signals, tasks digit and parity), 50 clients (Dirichlet alpha 1.0), MLP
40-128-128, 1 local epoch of SGD (lr 0.1, momentum 0.5, batch 16), 10 updates per server step, every
client online. Client speeds are lognormal (median 20 samples/s, sigma 1) and so are bandwidths (median
100 kB/s, sigma 1), drawn per client from the seed (fedmtl.fl.systems). A client's time is its training
samples / speed + (bytes down + up) / bandwidth.

* sync: FedAvg, 10 clients per round; a round waits for its slowest client.
* sync + deadline: 13 sampled (over_selection 0.3), the first 10 to finish kept, a 10 s deadline.
* fedbuff: concurrency 20, buffer 10, weight (1 + staleness) ** -0.5 (Nguyen et al. 2022).

Time to accuracy = the simulated seconds until the global model's held-out digit accuracy first reaches
the target. Writes ``benchmarks/results/systems.json``, ``docs/systems.png`` and the table in
``docs/systems.md``. Run: ``PYTHONPATH=src python benchmarks/systems.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, machine, markdown_table, merge, run, write_between_markers, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = {"speed": {"name": "lognormal", "median": 20, "sigma": 1.0}, "bandwidth": {"name": "lognormal", "median": 100000, "sigma": 1.0}}
BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": {"name": "mnist1d", "num_samples": 4000, "tasks": ["digit", "parity"]}, "num_clients": 50, "partition": {"name": "dirichlet", "alpha": 1.0}},
    "model": {"trunk": {"name": "mlp", "hidden": [128, 128]}},
    "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
    "server": {"rounds": 60, "clients_per_round": 10},
    "evaluation": {"every": 1, "personalized": False},
}
SETUPS = {
    "sync": {"systems": {"clients": CLIENTS, "mode": {"name": "sync"}}},
    "sync + deadline": {"systems": {"clients": CLIENTS, "mode": {"name": "sync", "deadline": 10, "over_selection": 0.3}}},
    "fedbuff": {
        "systems": {
            "clients": CLIENTS,
            "mode": {"name": "fedbuff", "buffer_size": 10, "concurrency": 20, "staleness": {"name": "polynomial", "a": 0.5}},
        }
    },
}
TARGET = 0.35
#: FedBuff steps far more often than a synchronous round ends: more steps, for a like span of simulated time
STEPS = {"sync": 60, "sync + deadline": 60, "fedbuff": 180}
#: the simulated time at which the setups' accuracies are compared side by side
AT = 150.0


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in curve if acc >= target), None)


def accuracy_at(curve: list[tuple[float, float]], t: float) -> float | None:
    """The accuracy of the last model evaluated by simulated time ``t``."""
    before = [acc for s, acc in curve if s <= t]
    return before[-1] if before else None


def measure(name: str, quick: bool, tmp: Path) -> dict[str, Any]:
    cfg = merge(merge(BASE, SETUPS[name]), {"server": {"rounds": 5 if quick else STEPS[name]}})
    summary = run(cfg, tmp, name.replace(" ", "_").replace("+", ""))
    history = summary.pop("history")
    curve = [(r["virtual_time"], r["global"]["digit"]["accuracy"]) for r in history if r.get("global")]
    staleness = [r["staleness"]["mean"] for r in history if r.get("staleness")]
    return {
        "curve": curve,
        "server_steps": len(history),
        "dropped": sum(len(r["dropped"]) for r in history),
        "mean_staleness": sum(staleness) / len(staleness) if staleness else 0.0,
        "wall_seconds": summary["benchmark_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 server steps per setup (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(SETUPS), help="rerun these setups; the others' results are read back from the JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    name = "systems_quick" if args.quick else "systems"
    path = RESULTS / f"{name}.json"
    runs: dict[str, Any] = json.loads(path.read_text())["runs"] if args.only and path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.only or list(SETUPS):
            runs[setup] = measure(setup, args.quick, Path(tmp))
            print(setup, {k: v for k, v in runs[setup].items() if k != "curve"}, flush=True)
    rows = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for setup in SETUPS:
        r = runs[setup]
        curve = [tuple(p) for p in r["curve"]]
        r["time_to_target"] = time_to(curve, TARGET)
        r[f"digit_accuracy_at_{AT:g}s"] = accuracy_at(curve, AT)
        r["final_virtual_time"], r["final_digit_accuracy"] = curve[-1]
        reached = r["time_to_target"]
        rows.append(
            [
                setup,
                f"{reached:.1f}" if reached is not None else f"not reached in {curve[-1][0]:.1f}",
                r[f"digit_accuracy_at_{AT:g}s"],
                r["server_steps"],
                f"{r['final_virtual_time']:.1f}",
                r["final_digit_accuracy"],
                r["dropped"],
                f"{r['mean_staleness']:.2f}",
            ]
        )
        ax.plot([t for t, _ in curve], [a for _, a in curve], label=setup)
    ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("held-out digit accuracy")
    ax.set_title("Time to accuracy among lognormal stragglers (MNIST-1D, 50 clients)")
    ax.legend()
    fig.tight_layout()
    headers = [
        "setup",
        f"simulated s to digit acc {TARGET}",
        f"digit acc at {AT:g} s",
        "server steps",
        "simulated s in all",
        "final digit acc",
        "dropped",
        "mean staleness",
    ]
    table = markdown_table(headers, rows)
    results = {"machine": machine(), "target_digit_accuracy": TARGET, "base": BASE, "setups": SETUPS, "steps": STEPS, "runs": runs, "table": table}
    out = write_json(name, results)
    png = ROOT / "docs" / f"{name}.png"
    fig.savefig(png, dpi=110)
    if not args.quick:
        write_between_markers(ROOT / "docs" / "systems.md", "systems-table", table)
    print("\n" + table + f"\n\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
