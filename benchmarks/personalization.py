"""Personalisation benchmark: non-IID, task-heterogeneous multi-task MNIST-1D.

50 clients, each holding 2 of the 3 tasks (digit, parity, mod3), label skew by Dirichlet(0.1) or by
shards (2 digits per client); 30 rounds, 10 clients per round, 2 local epochs. For every method:
the mean and worst-10 % of the clients' personalised accuracy on their own test splits (the mean
over each client's tasks), and the global model's held-out accuracy.

Centralised: one client holding the pooled training rows of all 50 clients with every task's label,
trained for 12 epochs (the data passes the federated runs make), scored on the same per-client test splits.

Run: ``PYTHONPATH=src python benchmarks/personalization.py [--methods apfl,pfedme] [--partitions shards2]`` (writes benchmarks/results/personalization.json
and docs/personalization.png).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedmtl
from fedmtl.fl.evaluation import evaluate, summarize_clients
from fedmtl.mtl import build_model

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "benchmarks" / "results" / "personalization.json"
OUT_PNG = ROOT / "docs" / "personalization.png"
RUNS = Path("/tmp/fedmtl-bench-personalization")

TASKS = ["digit", "parity", "mod3"]
PARTITIONS = {
    "dirichlet0.1": {"name": "dirichlet", "alpha": 0.1},
    "shards2": {"name": "shards", "classes_per_client": 2},
}
METHODS: dict[str, dict[str, Any]] = {
    "local": {"name": "local"},
    "fedavg": {"name": "fedavg"},
    "fedprox": {"name": "fedprox", "mu": 0.01},
    "scaffold": {"name": "scaffold"},
    "fedper": {"name": "fedper"},
    "fedrep": {"name": "fedrep", "head_epochs": 3},
    "ditto": {"name": "ditto", "lam": 0.1},
    "apfl": {"name": "apfl", "alpha": 0.75, "alpha_lr": 0.01},
    "pfedme": {"name": "pfedme", "lam": 5.0, "inner_steps": 3, "personal_lr": 0.05},
    "fedem": {"name": "fedem", "components": 2},
    "ifca": {"name": "ifca", "clusters": 3},
    "mocha": {"name": "mocha", "lam": 0.01, "eps": 0.1},
}


def base_config(partition: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "seed": 0,
        "runtime": {"threads": 1},
        "data": {
            "num_clients": 50,
            "source": {"name": "mnist1d", "num_samples": 10000, "tasks": TASKS},
            "partition": partition,
            "task_assignment": {"name": "random_subset", "tasks_per_client": 2},
        },
        "client": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "server": {"rounds": 30, "clients_per_round": 10},
        "evaluation": {"every": 10},
        "output": {"dir": str(RUNS), "name": name, "checkpoint_every": 1000, "plots": False},
    }


def run_method(partition: str, method: str) -> dict[str, Any]:
    cfg = base_config(PARTITIONS[partition], f"{partition}-{method}-{time.time_ns()}")
    cfg["algorithm"] = METHODS[method]
    t0 = time.perf_counter()
    res = fedmtl.Experiment(cfg).run(progress=False)
    pers = res.summary["final_personalized"]
    glob = res.summary["final_global"]
    return {
        "mean": pers["mean"],
        "worst10": pers["worst10"],
        "median": pers["median"],
        "per_task": pers["per_task"],
        "global": {t: m["accuracy"] for t, m in glob.items()},
        "scores": client_scores(res.run_dir),
        "seconds": time.perf_counter() - t0,
    }


def client_scores(run_dir: Path) -> list[float]:
    """Each client's final personalised score, from the run's clients.json."""
    path = Path(run_dir) / "clients.json"
    return [row["score"] for row in json.loads(path.read_text())] if path.exists() else []


def run_centralised(partition: str) -> dict[str, Any]:
    """One client with every federated client's training rows and every task's label."""
    cfg = base_config(PARTITIONS[partition], "unused")
    fed = fedmtl.Experiment(cfg).data  # the task-heterogeneous federation (its clients' test splits)
    cfg_all = base_config(PARTITIONS[partition], "unused")
    cfg_all["data"]["task_assignment"] = {"name": "all"}
    full = fedmtl.Experiment(cfg_all).data  # the same rows per client, labelled for every task
    x = torch.cat([c.train.x for c in full.clients]).numpy()
    y = {t: torch.cat([c.train.y[t] for c in full.clients]).numpy() for t in TASKS}
    kinds = {t.name: t.kind for t in full.tasks}
    classes = {t.name: t.num_classes for t in full.tasks if t.kind == "multiclass"}
    source = fedmtl.from_arrays(x, y, kinds, num_classes=classes)
    central = {
        "seed": 0,
        "runtime": {"threads": 1},
        "data": {
            "num_clients": 1,
            "source": {"name": "table", "path": "in-memory", "holdout_fraction": 0.0, "tasks": [{"name": t, "kind": kinds[t]} for t in TASKS]},
            "partition": {"name": "iid"},
            "test_fraction": 0.01,  # (an empty local test split is not accepted by the data layer)
            "preprocessing": {"normalize": "none"},
        },
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "server": {"rounds": 12},
        "evaluation": {"every": 1000, "personalized": False},
        "output": {"dir": str(RUNS), "name": f"{partition}-central-{time.time_ns()}", "checkpoint_every": 1000, "plots": False},
    }
    t0 = time.perf_counter()
    res = fedmtl.Experiment(central, source=source).run(progress=False)
    model = build_model(fedmtl.ExperimentConfig().model, fed.input_shape, fed.tasks)
    rows = []
    for c in fed.clients:
        if len(c.test) == 0:
            continue
        m = evaluate(model, res.params, c.test, c.tasks)
        rows.append({"score": float(np.mean([m[t]["accuracy"] for t in m]))})
    s = summarize_clients(rows)
    glob = evaluate(model, res.params, fed.holdout, TASKS)
    return {
        "mean": s["mean"],
        "worst10": s["worst10"],
        "median": s["median"],
        "global": {t: glob[t]["accuracy"] for t in TASKS},
        "scores": [r["score"] for r in rows],
        "seconds": time.perf_counter() - t0,
    }


def plot(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.2), sharey=True)
    for ax, (part, res) in zip(np.atleast_1d(axes), results.items(), strict=True):
        names = list(res)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [res[n]["mean"] for n in names], 0.4, label="mean")
        ax.bar(x + 0.2, [res[n]["worst10"] for n in names], 0.4, label="worst 10 %")
        if "fedavg" in res:
            ax.axhline(res["fedavg"]["mean"], color="gray", ls="--", lw=0.8)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_title(f"personalised accuracy, {part}")
        ax.legend()
    fig.tight_layout()
    OUT_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT_PNG, dpi=110)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The Markdown table of docs/personalization.md."""
    parts = list(results)
    head = "| method | " + " | ".join(f"{p} mean | {p} worst 10 % | {p} global digit" for p in parts) + " | seconds (both runs) |"
    lines = [head, "|" + "---|" * (3 * len(parts) + 2)]
    for m in ["central", *METHODS]:
        if not any(m in results[p] for p in parts):
            continue
        cells = []
        for p in parts:
            r = results[p].get(m)
            cells += [f"{r['mean']:.3f}", f"{r['worst10']:.3f}", f"{r['global'].get('digit', float('nan')):.3f}"] if r else ["", "", ""]
        secs = sum(results[p][m]["seconds"] for p in parts if m in results[p])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", nargs="*", help="methods to (re-)run; the others keep their saved results")
    ap.add_argument("--methods", dest="methods_flag", default="", help="comma-separated, same as the positional list")
    ap.add_argument("--partitions", default=",".join(PARTITIONS), help="comma-separated subset of " + ", ".join(PARTITIONS))
    ap.add_argument("--table", action="store_true", help="print the table and redraw the plot from the saved results")
    args = ap.parse_args(argv)
    if args.table:
        saved = json.loads(OUT_JSON.read_text())["results"]
        print(table(saved))
        plot(saved)
        return
    chosen = [*args.methods, *[m for m in args.methods_flag.split(",") if m]]
    unknown = [m for m in chosen if m != "central" and m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from central, {', '.join(METHODS)}")
    methods = chosen or ["central", *METHODS]
    parts = [p for p in args.partitions.split(",") if p]
    # a partial run updates the saved results in place
    results: dict[str, dict[str, dict[str, Any]]] = json.loads(OUT_JSON.read_text())["results"] if OUT_JSON.exists() and chosen else {}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for m in methods:
            r = run_centralised(part) if m == "central" else run_method(part, m)
            results.setdefault(part, {})[m] = r
            print(f"{part:13s} {m:9s} mean={r['mean']:.3f} worst10={r['worst10']:.3f} ({r['seconds']:.0f}s)", flush=True)
            OUT_JSON.write_text(json.dumps({"config": base_config(PARTITIONS["dirichlet0.1"], "-"), "methods": METHODS, "results": results}, indent=1))
    plot(results)


if __name__ == "__main__":
    main(sys.argv[1:])
