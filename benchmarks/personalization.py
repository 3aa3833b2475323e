"""Personalisation benchmark: non-IID, task-heterogeneous multi-task MNIST-1D.

50 clients, each holding 2 of the 3 tasks (digit, parity, mod3), label skew by Dirichlet(0.1) or by
shards (2 digits per client); 300 rounds, 10 clients per round, 2 local epochs (each client takes part
about 60 times: long enough for the methods that re-derive their personal model from shared ones —
pFedMe, FedEM — to converge; local training has plateaued by round 100). For every method:
the mean and worst-10 % of the clients' personalised accuracy on their own test splits (the mean
over each client's tasks), and the global model's held-out accuracy.

Protocol: hyper-parameters are chosen on seed 0 (``--seeds 0 --out personalization_tuning``) and
reported on seeds 1, 2, 3 (the default), as the mean and standard deviation over those seeds. A seed
draws the data partition, the task assignment, the initial model and the client sampling.

Centralised: one client holding the pooled training rows of all 50 clients with every task's label,
trained for as many epochs as the federated runs make passes over the data, scored on the same
per-client test splits.

Run: ``PYTHONPATH=src python benchmarks/personalization.py [--methods apfl,pfedme] [--partitions shards2]
[--seeds 1,2,3] [--jobs 2]`` (writes benchmarks/results/personalization.json and docs/personalization.png).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import client_accuracies

import fedmtl
from fedmtl.fl.evaluation import evaluate, summarize_clients
from fedmtl.mtl import build_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT_PNG = ROOT / "docs" / "personalization.png"
RUNS = Path("/tmp/fedmtl-bench-personalization")

TASKS = ["digit", "parity", "mod3"]
NUM_CLIENTS, CLIENTS_PER_ROUND, EPOCHS = 50, 10, 2
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
    "apfl": {"name": "apfl", "alpha": 0.4, "alpha_lr": 0.0},
    "pfedme": {"name": "pfedme", "lam": 1.0, "inner_steps": 5, "personal_lr": 0.05},
    "fedem": {"name": "fedem", "components": 4},  # with its gate (the default): the mixture weights depend on x
    "fedem-paper": {"name": "fedem", "components": 2, "gate": False},  # Marfoq et al.'s x-independent mixture
    "ifca": {"name": "ifca", "clusters": 3},
    "ifca-cluster": {"name": "ifca", "clusters": 3, "personal_model": "cluster"},
    "mocha": {"name": "mocha", "lam": 0.01, "eps": 0.1},
}
#: per-method changes to the shared client settings, chosen on the tuning seed like the methods' own
METHOD_CLIENT: dict[str, dict[str, Any]] = {
    "fedem": {"optimizer": {"name": "sgd", "lr": 0.1}},
    "fedem-paper": {"optimizer": {"name": "sgd", "lr": 0.1}},
}


def base_config(partition: dict[str, Any], name: str, seed: int, rounds: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "runtime": {"threads": 1},
        "data": {
            "num_clients": NUM_CLIENTS,
            "source": {"name": "mnist1d", "num_samples": 10000, "tasks": TASKS},
            "partition": partition,
            "task_assignment": {"name": "random_subset", "tasks_per_client": 2},
        },
        "client": {"epochs": EPOCHS, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "server": {"rounds": rounds, "clients_per_round": CLIENTS_PER_ROUND},
        "evaluation": {"every": max(rounds // 4, 1)},
        "output": {"dir": str(RUNS), "name": name, "checkpoint_every": 100000, "plots": False},
    }


def run_method(partition: str, method: str, seed: int, rounds: int) -> dict[str, Any]:
    cfg = base_config(PARTITIONS[partition], f"{partition}-{method}-{seed}-{time.time_ns()}", seed, rounds)
    cfg["algorithm"] = METHODS[method]
    cfg["client"] = {**cfg["client"], **METHOD_CLIENT.get(method, {})}
    t0 = time.perf_counter()
    res = fedmtl.Experiment(cfg).run(progress=False)
    pers = res.summary["final_personalized"]
    glob = res.summary["final_global"]
    scores = client_accuracies(res.run_dir)
    s = summarize_clients([{"score": v} for v in scores])
    return {
        "mean": s["mean"],
        "worst10": s["worst10"],
        "median": s["median"],
        "per_task_pooled": {t: block["pooled"]["accuracy"] for t, block in pers.items()},
        "global": {t: m["accuracy"] for t, m in glob.items()},
        "scores": scores,
        "seconds": time.perf_counter() - t0,
    }


def run_centralised(partition: str, seed: int, rounds: int) -> dict[str, Any]:
    """One client with every federated client's training rows and every task's label."""
    cfg = base_config(PARTITIONS[partition], "unused", seed, rounds)
    fed = fedmtl.Experiment(cfg).data  # the task-heterogeneous federation (its clients' test splits)
    cfg["data"]["task_assignment"] = {"name": "all"}
    full = fedmtl.Experiment(cfg).data  # the same rows per client, labelled for every task
    x = torch.cat([c.train.x for c in full.clients]).numpy()
    y = {t: torch.cat([c.train.y[t] for c in full.clients]).numpy() for t in TASKS}
    kinds = {t.name: t.kind for t in full.tasks}
    classes = {t.name: t.num_classes for t in full.tasks if t.kind == "multiclass"}
    source = fedmtl.from_arrays(x, y, kinds, num_classes=classes)
    passes = max(round(rounds * CLIENTS_PER_ROUND * EPOCHS / NUM_CLIENTS), 1)  # the data passes of a federated run
    central = {
        "seed": seed,
        "runtime": {"threads": 1},
        "data": {
            "num_clients": 1,
            "source": {"name": "table", "path": "in-memory", "holdout_fraction": 0.0, "tasks": [{"name": t, "kind": kinds[t]} for t in TASKS]},
            "partition": {"name": "iid"},
            "test_fraction": 0.01,  # (an empty local test split is not accepted by the data layer)
            "preprocessing": {"normalize": "none"},
        },
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "server": {"rounds": passes},
        "evaluation": {"every": 100000, "personalized": False},
        "output": {"dir": str(RUNS), "name": f"{partition}-central-{seed}-{time.time_ns()}", "checkpoint_every": 100000, "plots": False},
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


def run_one(job: tuple[str, str, int, int]) -> tuple[tuple[str, str, int, int], dict[str, Any]]:
    """One (partition, method, seed, rounds) cell; a top-level function so a worker process can run it."""
    part, method, seed, rounds = job
    torch.set_num_threads(1)
    return job, (run_centralised(part, seed, rounds) if method == "central" else run_method(part, method, seed, rounds))


def over_seeds(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over the seeds of one method's cells, and the pooled client scores."""
    runs = list(cells.values())

    def stat(key: str, sub: str | None = None) -> tuple[float, float]:
        vals = np.array([r[key][sub] if sub else r[key] for r in runs if (sub is None or sub in r[key])], dtype=float)
        return (float(vals.mean()), float(vals.std())) if vals.size else (float("nan"), float("nan"))

    return {
        "seeds": sorted(int(s) for s in cells),
        "mean": stat("mean"),
        "worst10": stat("worst10"),
        "global_digit": stat("global", "digit"),
        "scores": [s for r in runs for s in r["scores"]],
        "seconds": float(sum(r["seconds"] for r in runs)),
    }


def order(results: dict[str, dict[str, Any]]) -> list[str]:
    return [m for m in ["central", *METHODS] if any(m in results[p] for p in results)]


def plot(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Top row: mean and worst-10 % bars with the spread over seeds; bottom row: every client's score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(results)
    fig, axes = plt.subplots(2, len(parts), figsize=(7 * len(parts), 8.4), sharey="row", squeeze=False)
    for col, part in enumerate(parts):
        agg = {m: over_seeds(results[part][m]) for m in order(results) if m in results[part]}
        names = list(agg)
        x = np.arange(len(names))
        ax = axes[0, col]
        ax.bar(x - 0.2, [agg[n]["mean"][0] for n in names], 0.4, yerr=[agg[n]["mean"][1] for n in names], capsize=2, label="mean")
        ax.bar(x + 0.2, [agg[n]["worst10"][0] for n in names], 0.4, yerr=[agg[n]["worst10"][1] for n in names], capsize=2, label="worst 10 %")
        for ref, style in (("local", ":"), ("fedavg", "--")):
            if ref in agg:
                ax.axhline(agg[ref]["mean"][0], color="gray", ls=style, lw=0.8, label=f"{ref} mean")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_title(f"personalised accuracy, {part} (seeds {agg[names[0]]['seeds']})")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        ax.boxplot([agg[n]["scores"] for n in names], whis=(5, 95), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(x + 1, names, rotation=45, ha="right")
        ax.set_title(f"each client's accuracy, {part} (seeds pooled; whiskers 5-95 %)")
    fig.tight_layout()
    OUT_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT_PNG, dpi=100)
    plt.close(fig)


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The Markdown table of docs/personalization.md: mean ± standard deviation over the seeds."""
    parts = list(results)
    head = "| method | " + " | ".join(f"{p} mean | {p} worst 10 % | {p} global digit" for p in parts) + " | seconds (all runs) |"
    lines = [head, "|" + "---|" * (3 * len(parts) + 2)]
    for m in order(results):
        cells, secs = [], 0.0
        for p in parts:
            if m not in results[p]:
                cells += ["", "", ""]
                continue
            a = over_seeds(results[p][m])
            cells += [f"{a['mean'][0]:.3f} ± {a['mean'][1]:.3f}", f"{a['worst10'][0]:.3f} ± {a['worst10'][1]:.3f}", f"{a['global_digit'][0]:.3f}"]
            secs += a["seconds"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", nargs="*", help="methods to (re-)run; the others keep their saved results")
    ap.add_argument("--methods", dest="methods_flag", default="", help="comma-separated, same as the positional list")
    ap.add_argument("--partitions", default=",".join(PARTITIONS), help="comma-separated subset of " + ", ".join(PARTITIONS))
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (0 is the tuning seed)")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (each runs one experiment on one thread)")
    ap.add_argument("--out", default="personalization", help="results file name under benchmarks/results/")
    ap.add_argument("--table", action="store_true", help="print the table and redraw the plot from the saved results")
    args = ap.parse_args(argv)
    out_json = RESULTS / f"{args.out}.json"
    if args.table:
        saved = json.loads(out_json.read_text())["results"]
        print(table(saved))
        if args.out == "personalization":  # the docs' plot shows the held-out seeds only
            plot(saved)
        return
    chosen = [*args.methods, *[m for m in args.methods_flag.split(",") if m]]
    unknown = [m for m in chosen if m != "central" and m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from central, {', '.join(METHODS)}")
    methods = chosen or ["central", *METHODS]
    parts = [p for p in args.partitions.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    saved = json.loads(out_json.read_text()) if out_json.exists() else {}
    # a partial run updates the saved results in place; a change of rounds starts afresh
    results: dict[str, dict[str, dict[str, Any]]] = saved.get("results", {}) if saved.get("rounds") == args.rounds else {}
    jobs = [(p, m, s, args.rounds) for p in parts for m in methods for s in seeds]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for (part, m, seed, _), r in pool.map(run_one, jobs):
            results.setdefault(part, {}).setdefault(m, {})[str(seed)] = r
            print(f"{part:13s} {m:9s} seed {seed} mean={r['mean']:.3f} worst10={r['worst10']:.3f} ({r['seconds']:.0f}s)", flush=True)
            payload = {
                "rounds": args.rounds,
                "config": base_config(PARTITIONS["dirichlet0.1"], "-", 0, args.rounds),
                "methods": METHODS,
                "method_client": METHOD_CLIENT,
                "results": results,
            }
            out_json.write_text(json.dumps(payload, indent=1))
    print(table(results))
    if args.out == "personalization":
        plot(results)


if __name__ == "__main__":
    main(sys.argv[1:])
