"""Byzantine robustness: final accuracy of every attack x aggregator, against the same aggregator's clean run.

Workload: scikit-learn's 8x8 digits (1,797 images, 20% held out by the server), 20 IID clients, all 20
in every round, 4 of them (20%) attackers; tasks digit (10 classes) and parity; MLP 64-64-*; 1 local
epoch of SGD (lr 0.1, batch 32); 15 rounds. Aggregators: mean (FedAvg), coordinate median, trimmed mean
(beta 0.2), Multi-Krum (f 4, m 10), norm-bounded mean (max_norm 0.1, below most honest updates' norm). Attacks: ``server.byzantine.attack`` (see :mod:`fedmtl.fl.byzantine`
for each one's paper) with the scales in ``ATTACKS``.

Writes ``benchmarks/results/robustness.json`` and prints the markdown table (``--docs docs/reliability.md``
writes it there). Run: ``PYTHONPATH=src nice python benchmarks/robustness.py [--quick] [--docs PATH]``
(85 s on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, markdown_table, merge, run, write_between_markers, write_json

BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": {"name": "digits", "tasks": ["digit", "parity"]}, "num_clients": 20, "partition": {"name": "iid"}},
    "model": {"trunk": {"name": "mlp", "hidden": [64]}},
    "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "server": {"rounds": 15, "clients_per_round": 20},
    "evaluation": {"every": 15, "personalized": False},
}
AGGREGATORS: dict[str, dict[str, Any]] = {
    "mean": {"name": "mean"},
    "median": {"name": "median"},
    "trimmed mean": {"name": "trimmed_mean", "beta": 0.2},
    "Krum": {"name": "krum", "f": 4, "m": 10},
    "norm-bounded": {"name": "norm_bounded", "max_norm": 0.1},
}
#: attack -> scale (its meaning per attack: fedmtl.fl.byzantine)
ATTACKS: dict[str, float] = {
    "sign_flip": 4.0,
    "scaled": 100.0,
    "gaussian": 1.0,
    "nan": 1.0,
    "sample_inflation": 1e6,
    "payload_bomb": 1.0,
    "label_flip": 1.0,
    "alie": 1.0,
    "ipm": 5.0,
}
FRACTION = 0.2


def accuracy(summary: dict[str, Any]) -> float:
    """Mean accuracy over the tasks on the server's hold-out after the last round."""
    final = summary["final_global"]
    return sum(m["accuracy"] for m in final.values()) / len(final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds, mean and median only")
    parser.add_argument("--docs", help="write the table into this markdown file (docs/reliability.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("fedmtl").setLevel(logging.ERROR)  # the attacks' drops are counted below, not logged
    base, aggregators = BASE, AGGREGATORS
    if args.quick:
        base = merge(BASE, {"server": {"rounds": 3}, "evaluation": {"every": 3}})
        aggregators = {k: AGGREGATORS[k] for k in ("mean", "median")}
    out = Path(tempfile.mkdtemp(prefix="fedmtl-robustness-"))
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    clean: dict[str, float] = {}
    for agg_name, agg in aggregators.items():
        for attack in ["none", *ATTACKS]:
            patch: dict[str, Any] = {"server": {"aggregator": agg}}
            if attack != "none":
                patch["server"]["byzantine"] = {"fraction": FRACTION, "attack": attack, "scale": ATTACKS[attack]}
            s = run(merge(base, patch), out, f"{agg['name']}-{attack}")
            acc = accuracy(s)
            if attack == "none":
                clean[agg_name] = acc
            history = s["history"]
            row = {
                "aggregator": agg_name,
                "attack": attack,
                "scale": ATTACKS.get(attack),
                "accuracy": acc,
                "vs_clean": acc - clean[agg_name],
                "dropped_updates": sum(len(h.get("dropped", {})) for h in history),
                "skipped_rounds": sum(bool(h.get("skipped")) for h in history),
                "rounds_completed": s["rounds_completed"],
                "seconds": s["benchmark_seconds"],
            }
            results.append(row)
            print(row, flush=True)
    attacks = ["none", *ATTACKS]
    cell = {(r["attack"], r["aggregator"]): r for r in results}

    def fmt(r: dict[str, Any]) -> str:
        if r["attack"] == "none":
            return f"{r['accuracy']:.3f}"
        return f"{r['accuracy']:.3f} ({r['vs_clean']:+.3f})"

    table = markdown_table(
        ["attack (scale)", *aggregators],
        [[a if a == "none" else f"{a} ({ATTACKS[a]:g})", *(fmt(cell[(a, g)]) for g in aggregators)] for a in attacks],
    )
    print()
    print(table)
    write_json(
        "robustness" + ("_quick" if args.quick else ""),
        {
            "workload": base,
            "fraction": FRACTION,
            "aggregators": aggregators,
            "attacks": ATTACKS,
            "results": results,
            "table": table,
            "seconds": time.perf_counter() - t0,
            "machine": machine(),
        },
    )
    if args.docs and not args.quick:
        write_between_markers(Path(args.docs), "robustness", table)


if __name__ == "__main__":
    main()
