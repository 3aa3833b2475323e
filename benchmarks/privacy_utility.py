"""The privacy-utility curve of client-level DP-FedAvg on MNIST-1D: accuracy against epsilon.

Workload: MNIST-1D (12,000 signals), 100 IID clients, 20 per round, MLP 40-256-256-10, 2 local epochs of
SGD (lr 0.1), 30 rounds, clip norm 1.0, delta 1e-5; noise multipliers from 0 (no noise, infinite
epsilon) upwards. Epsilon is Opacus' RDP accountant after the last round (sample rate 0.2).

Writes ``benchmarks/results/privacy_utility.json`` and ``docs/privacy_utility.png``.
Run: ``PYTHONPATH=src python benchmarks/privacy_utility.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import machine, markdown_table, merge, run, write_json  # noqa: E402

BASE = {
    "seed": 0,
    "data": {"source": {"name": "mnist1d", "num_samples": 12000, "tasks": ["digit", "parity"]}, "num_clients": 100, "partition": {"name": "iid"}, "test_fraction": 0.0},
    "model": {"trunk": {"name": "mlp", "hidden": [256, 256]}},
    "client": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "server": {"rounds": 30, "clients_per_round": 20},
    "evaluation": {"every": 30, "personalized": False},
}
SIGMAS = [0.0, 0.3, 0.5, 0.8, 1.2, 2.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, sigmas = BASE, SIGMAS
    if args.quick:
        base = merge(BASE, {"server": {"rounds": 5}, "evaluation": {"every": 5}})
        sigmas = [0.0, 1.0]
    out = Path(tempfile.mkdtemp(prefix="fedmtl-dp-"))
    rows = []
    plain = run(base, out, "no-dp")
    rows.append({"sigma": None, "epsilon": math.inf, "digit": plain["final_global"]["digit"]["accuracy"], "parity": plain["final_global"]["parity"]["accuracy"]})
    for sigma in sigmas:
        s = run(merge(base, {"privacy": {"dp": {"clip_norm": 1.0, "noise_multiplier": sigma}}}), out, f"dp-{sigma}")
        eps = s["privacy"]["epsilon"] if sigma > 0 else math.inf
        rows.append({"sigma": sigma, "epsilon": eps, "digit": s["final_global"]["digit"]["accuracy"], "parity": s["final_global"]["parity"]["accuracy"]})
        print(rows[-1], flush=True)
    table = markdown_table(
        ["noise multiplier σ", "ε (δ = 1e-5)", "digit accuracy", "parity accuracy"],
        [["none (no DP)" if r["sigma"] is None else r["sigma"], "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.2f}", r["digit"], r["parity"]] for r in rows],
    )
    finite = [r for r in rows if not math.isinf(r["epsilon"])]
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, color in (("digit", "C0"), ("parity", "C1")):
        ax.plot([r["epsilon"] for r in finite], [r[task] for r in finite], "o-", color=color, label=f"{task} (DP-FedAvg)")
        ax.axhline(rows[0][task], color=color, linestyle="--", alpha=0.6, label=f"{task} (no DP)")
    ax.set_xscale("log")
    ax.set_xlabel("ε at δ = 1e-5 (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Privacy-utility: client-level DP-FedAvg, MNIST-1D")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(__file__).resolve().parents[1] / "docs" / ("privacy_utility_quick.png" if args.quick else "privacy_utility.png")
    fig.savefig(png, dpi=110)
    path = write_json("privacy_utility" + ("_quick" if args.quick else ""), {"machine": machine(), "rows": rows, "table": table})
    print("\n" + table + f"\n\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
