"""Whole federated runs per codec chain, per server optimiser, and per aggregator under attack.

Three tables, one JSON (``benchmarks/results/comm_federated.json``):

1. **Codecs** on the canonical workload (FedAvg, MNIST-1D, 100 IID clients, MLP 40-256-256-10,
   5 local epochs of SGD, batch 32, lr 0.3; ``--rounds``, default 20): uplink and downlink bytes,
   ratio to fp32, final accuracy and its change against fp32.
2. **Server optimisers** on a non-IID multi-task workload (Dirichlet alpha = 0.3, tasks digit and
   parity, 30 of 100 clients per round): final accuracy per task.
3. **Robust aggregation** with 20 % Byzantine clients (sign flip, scale 4) on the canonical workload:
   final accuracy per aggregator, with the no-attack FedAvg figure as the reference.

Run: ``PYTHONPATH=src python benchmarks/comm_federated.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import machine, markdown_table, merge, run, write_json

CANONICAL = {
    "seed": 0,
    "data": {"source": {"name": "mnist1d", "num_samples": 12000, "tasks": ["digit"]}, "num_clients": 100, "partition": {"name": "iid"}, "test_fraction": 0.0},
    "model": {"trunk": {"name": "mlp", "hidden": [256, 256]}},
    "client": {"epochs": 5, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.3}},
    "server": {"rounds": 20},
    "evaluation": {"every": 5, "personalized": False},
}
NON_IID = merge(
    CANONICAL,
    {
        "data": {"source": {"tasks": ["digit", "parity"]}, "partition": {"name": "dirichlet", "alpha": 0.3}, "test_fraction": 0.2},
        "client": {"epochs": 2, "optimizer": {"lr": 0.1}},
        "evaluation": {"personalized": True},
        "server": {"fraction": 0.3, "rounds": 30},
    },
)

CHAINS = {
    "fp32": [{"name": "identity"}],
    "fp16": [{"name": "fp16"}],
    "int8": [{"name": "int8"}],
    "qsgd s=4 + zstd": [{"name": "qsgd", "levels": 4}, {"name": "zstd"}],
    "sign (EF)": [{"name": "sign"}],
    "topk 10% + int8 + zstd (EF)": [{"name": "topk", "fraction": 0.1}, {"name": "int8"}, {"name": "zstd"}],
    "topk 1% + int8 + zstd (EF)": [{"name": "topk", "fraction": 0.01}, {"name": "int8"}, {"name": "zstd"}],
    "topk 0.5% + int8 + zstd (EF)": [{"name": "topk", "fraction": 0.005}, {"name": "int8"}, {"name": "zstd"}],
}
OPTIMIZERS = {
    "fedavg": {"name": "fedavg"},
    "fedavgm": {"name": "fedavgm", "lr": 1.0, "momentum": 0.9},
    "fedadam": {"name": "fedadam", "lr": 0.01},
    "fedyogi": {"name": "fedyogi", "lr": 0.01},
    "fedadagrad": {"name": "fedadagrad", "lr": 0.05},
}
AGGREGATORS = {
    "mean (FedAvg)": {"name": "mean"},
    "median": {"name": "median"},
    "trimmed_mean": {"name": "trimmed_mean", "beta": 0.25},
    "multi-krum": {"name": "krum", "f": 20, "m": 10},
    "norm_bounded": {"name": "norm_bounded", "max_norm": 1.0},
}


def accuracy(summary: dict, task: str = "digit") -> float:
    return float(summary["final_global"][task]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 rounds and fewer variants: a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, non_iid = CANONICAL, NON_IID
    chains, optimizers, aggregators = CHAINS, OPTIMIZERS, AGGREGATORS
    if args.quick or args.rounds:
        rounds = args.rounds or 5
        base = merge(base, {"server": {"rounds": rounds}, "evaluation": {"every": rounds}})
        non_iid = merge(non_iid, {"server": {"rounds": rounds}, "evaluation": {"every": rounds}})
    if args.quick:
        chains = {k: CHAINS[k] for k in ("fp32", "int8", "topk 1% + int8 + zstd (EF)")}
        optimizers = {k: OPTIMIZERS[k] for k in ("fedavg", "fedadam")}
        aggregators = {k: AGGREGATORS[k] for k in ("mean (FedAvg)", "median")}
    out = Path(tempfile.mkdtemp(prefix="fedmtl-bench-"))
    results: dict = {"machine": machine(), "codecs": {}, "optimizers": {}, "robust": {}}

    for name, chain in chains.items():
        s = run(merge(base, {"comm": {"uplink": chain}}), out, f"codec-{len(results['codecs'])}")
        results["codecs"][name] = {"uplink_bytes": s["bytes_up_total"], "downlink_bytes": s["bytes_down_total"], "accuracy": accuracy(s), "seconds": s["benchmark_seconds"]}
        print(f"codec {name}: {results['codecs'][name]}", flush=True)
    ref = results["codecs"]["fp32"]
    rows = [
        [n, r["uplink_bytes"], f"{ref['uplink_bytes'] / r['uplink_bytes']:.1f}x", r["accuracy"], f"{100 * (r['accuracy'] - ref['accuracy']):+.1f}"]
        for n, r in results["codecs"].items()
    ]
    codec_table = markdown_table(["uplink chain", "uplink bytes (total)", "fewer bytes than fp32", "accuracy", "Δ points"], rows)

    for name, opt in optimizers.items():
        s = run(merge(non_iid, {"server": {"optimizer": opt}}), out, f"opt-{name}")
        results["optimizers"][name] = {"digit": accuracy(s), "parity": accuracy(s, "parity"), "personalized_mean": s["final_personalized"].get("mean")}
        print(f"optimizer {name}: {results['optimizers'][name]}", flush=True)
    opt_table = markdown_table(
        ["server optimiser", "digit accuracy", "parity accuracy", "personalised mean"],
        [[n, r["digit"], r["parity"], r["personalized_mean"]] for n, r in results["optimizers"].items()],
    )

    clean = run(base, out, "robust-clean")
    results["robust"]["no attack, mean"] = {"accuracy": accuracy(clean)}
    attack = {"fraction": 0.2, "attack": "sign_flip", "scale": 4.0}
    for name, agg in aggregators.items():
        s = run(merge(base, {"server": {"aggregator": agg, "byzantine": attack}}), out, f"robust-{name.split()[0]}")
        results["robust"][name] = {"accuracy": accuracy(s)}
        print(f"aggregator {name}: {results['robust'][name]}", flush=True)
    robust_table = markdown_table(["aggregator (20 % sign-flip x4 attackers)", "accuracy"], [[n, r["accuracy"]] for n, r in results["robust"].items()])

    results["tables"] = {"codecs": codec_table, "optimizers": opt_table, "robust": robust_table}
    path = write_json("comm_federated" + ("_quick" if args.quick else ""), results)
    print("\n" + codec_table + "\n\n" + opt_table + "\n\n" + robust_table + f"\n\nwrote {path}")


if __name__ == "__main__":
    main()
