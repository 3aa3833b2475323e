"""Centralised multi-task MNIST-1D: single-task baselines, then every balancer and scheme.

Tasks: ``digit`` (10 classes), ``parity`` (digit odd) and ``large`` (digit >= 5). One hard-sharing
MLP per run, the same data split and optimiser for every method; each method runs once per seed
(initialisation and batch order; default three seeds). Reports per-task test accuracy, Delta_m%
(mean relative accuracy change against the single-task models of the same seed, as in LibMTL) and
the wall time of a training step relative to equal weighting, measured round-robin over all methods
(median of several rounds, once per seed) so that load on a shared machine affects them alike; every
figure is the mean ± sample standard deviation over the seeds.

    PYTHONPATH=src python benchmarks/mtl_methods.py [--epochs 8] [--seeds 0 1 2] [--out benchmarks/results/mtl_methods.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset

from fedmtl.config import model as model_cfg
from fedmtl.config.mtl import MTLConfig
from fedmtl.mtl import build_model, build_objective
from fedmtl.tasks import Task

TASKS = [Task("digit", "multiclass", 10), Task("parity", "binary"), Task("large", "binary")]
NAMES = [t.name for t in TASKS]

METHODS: list[tuple[str, dict]] = [
    (n, {"balancer": {"name": n}})
    for n in [
        "equal", "rlw", "dwa", "uw", "gls", "famo", "stch", "gradnorm", "excess_mtl", "fairgrad", "moco",
        "pcgrad", "gradvac", "graddrop", "mgda", "mgda_ub", "cagrad", "imtl", "nash_mtl", "aligned_mtl",
        "db_mtl", "upgrad", "dualproj", "config", "modo", "sdmgrad",
    ]
]
METHODS.insert(1, ("static (1, .5, .5)", {"balancer": {"name": "static", "weights": {"digit": 1.0, "parity": 0.5, "large": 0.5}}}))
METHODS += [
    (f"{n} pref (2, 1, 1)", {"balancer": {"name": n, "pref_vector": {"digit": 2.0, "parity": 1.0, "large": 1.0}}})
    for n in ["upgrad", "dualproj"]
]
METHODS += [
    (f"{n} (rep. grads)", {"balancer": {"name": n}, "gradients": {"source": "representation"}})
    for n in ["pcgrad", "cagrad", "imtl", "nash_mtl", "upgrad"]
]
METHODS += [
    ("alternating/step", {"scheme": {"name": "alternating", "every": "step"}}),
    ("alternating/epoch", {"scheme": {"name": "alternating", "every": "epoch"}}),
    ("lagrangian digit s.t. f<=0.15", {"scheme": {"name": "lagrangian", "main": "digit", "constraints": {"parity": 0.15, "large": 0.15}, "dual_lr": 0.5}}),
]


def load(n: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    args = get_dataset_args()
    args.num_samples = n
    args.seed = seed
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    digit = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    x = (x - x.mean()) / x.std()
    cut = int(0.8 * len(x))
    xt = torch.from_numpy(x)
    d = torch.from_numpy(digit)
    targets = {"digit": d, "parity": (d % 2).float(), "large": (d >= 5).float()}
    train = {"x": xt[:cut], **{k: v[:cut] for k, v in targets.items()}}
    test = {"x": xt[cut:], **{k: v[cut:] for k, v in targets.items()}}
    return train, test


def run(mtl: dict, tasks: list[Task], train: dict, test: dict, epochs: int, seed: int, hidden: list[int]) -> dict:
    torch.manual_seed(seed)
    names = [t.name for t in tasks]
    model = build_model(model_cfg.HardSharing(trunk=model_cfg.MLPTrunk(hidden=hidden)), [40], tasks)
    objective = build_objective(MTLConfig.model_validate(mtl), names)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    state = objective.init()
    gen = torch.Generator().manual_seed(seed)
    n = len(train["x"])
    step_times = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - 63, 64):
            idx = perm[i : i + 64]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            preds = model(train["x"][idx], names)
            losses = {t.name: t.loss(preds[t.name], train[t.name][idx]) for t in tasks}
            state, log = objective.backward(model, losses, state, generator=gen, epoch=epoch)
            opt.step()
            step_times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        preds = model(test["x"], names)
    acc = {t.name: t.metrics(preds[t.name], test[t.name])["accuracy"] for t in tasks}
    return {"accuracy": acc, "step_ms": 1e3 * float(np.median(step_times)), "last_log": log}


def time_steps(methods: list[tuple[str, dict]], train: dict, hidden: list[int], rounds: int, steps: int, seed: int) -> dict[str, float]:
    """Median ms per training step of each method, measured round-robin so that load drift on a shared
    machine affects every method alike."""
    x, names = train["x"][:64], NAMES
    runs = {}
    for label, mtl in methods:
        torch.manual_seed(seed)
        model = build_model(model_cfg.HardSharing(trunk=model_cfg.MLPTrunk(hidden=hidden)), [40], TASKS)
        obj = build_objective(MTLConfig.model_validate(mtl), names)
        runs[label] = [model, obj, obj.init(), torch.optim.Adam(model.parameters(), lr=2e-3), []]
    gen = torch.Generator().manual_seed(seed)
    for r in range(rounds + 1):
        for run_ in runs.values():
            model, obj, state, opt, times = run_
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                preds = model(x, names)
                losses = {t.name: t.loss(preds[t.name], train[t.name][:64]) for t in TASKS}
                state, _ = obj.backward(model, losses, state, generator=gen, epoch=0)
                opt.step()
            run_[2] = state
            if r > 0:  # round 0 warms up
                times.append(1e3 * (time.perf_counter() - t0) / steps)
    return {label: float(np.median(v[4])) for label, v in runs.items()}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def delta_m(acc: dict[str, float], single: dict[str, float]) -> float:
    """LibMTL's Delta_m %: mean relative change of each task's accuracy against its single-task model."""
    return 100 * float(np.mean([(acc[t] - single[t]) / single[t] for t in single]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--data-seed", type=int, default=0, help="MNIST-1D generation and split (the same for every seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="initialisation and batch-order seeds")
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--timing-steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/mtl_methods.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load(a.samples, a.data_seed)
    started = time.time()
    single: dict[str, list[float]] = {t.name: [] for t in TASKS}
    acc: dict[str, dict[str, list[float]]] = {label: {t: [] for t in NAMES} for label, _ in METHODS}
    dm: dict[str, list[float]] = {label: [] for label, _ in METHODS}
    rel: dict[str, list[float]] = {label: [] for label, _ in METHODS}
    equal_ms: list[float] = []
    for seed in a.seeds:
        base = {t.name: run({}, [t], train, test, a.epochs, seed, a.hidden)["accuracy"][t.name] for t in TASKS}
        for t, v in base.items():
            single[t].append(v)
        for label, mtl in METHODS:
            r = run(mtl, TASKS, train, test, a.epochs, seed, a.hidden)
            for t in NAMES:
                acc[label][t].append(r["accuracy"][t])
            dm[label].append(delta_m(r["accuracy"], base))
            print(f"seed {seed} {label:32s} {r['accuracy']} dm={dm[label][-1]:+.2f}", flush=True)
        timing = time_steps(METHODS, train, a.hidden, a.timing_rounds, a.timing_steps, seed)
        equal_ms.append(timing["equal"])
        for label in rel:
            rel[label].append(timing[label] / timing["equal"])

    def cell(values: list[float], fmt: str) -> str:
        m, s = mean_std(values)
        return f"{m:{fmt}} ± {s:{fmt[1:] if fmt.startswith('+') else fmt}}"

    lines = [
        "| method | digit | parity | large | Δm% | step time (× equal) |",
        "|---|---|---|---|---|---|",
        f"| single-task | {cell(single['digit'], '.3f')} | {cell(single['parity'], '.3f')} | {cell(single['large'], '.3f')} | 0 | — |",
    ]
    rows = []
    for label, mtl in METHODS:
        rows.append(
            {
                "method": label,
                "config": mtl,
                "accuracy": {t: dict(zip(("mean", "std"), mean_std(acc[label][t]))) for t in NAMES},
                "accuracy_per_seed": acc[label],
                "delta_m": dict(zip(("mean", "std"), mean_std(dm[label]))),
                "delta_m_per_seed": dm[label],
                "relative_step_time": dict(zip(("mean", "std"), mean_std(rel[label]))),
                "relative_step_time_per_seed": rel[label],
            }
        )
        lines.append(
            f"| {label} | {cell(acc[label]['digit'], '.3f')} | {cell(acc[label]['parity'], '.3f')} | {cell(acc[label]['large'], '.3f')} "
            f"| {cell(dm[label], '+.2f')} | {cell(rel[label], '.2f')} |"
        )
    table = "\n".join(lines)
    print(table)
    out = {
        "setup": {
            "samples": a.samples, "epochs": a.epochs, "data_seed": a.data_seed, "seeds": a.seeds, "hidden": a.hidden,
            "batch": 64, "optimizer": "adam 2e-3", "threads": 1,
            "timing": {"rounds": a.timing_rounds, "steps": a.timing_steps, "statistic": "median over rounds, per seed"},
            "spread": "mean ± sample std (ddof 1) over seeds",
        },
        "single_task": {t: dict(zip(("mean", "std"), mean_std(v))) for t, v in single.items()},
        "single_task_per_seed": single,
        "methods": rows,
        "equal_step_ms_per_seed": equal_ms,
        "wall_s": time.time() - started,
        "table_markdown": table,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
