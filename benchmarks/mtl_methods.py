"""Centralised multi-task MNIST-1D: single-task baselines, then every balancer and scheme.

Tasks: ``digit`` (10 classes), ``parity`` (digit odd) and ``large`` (digit >= 5). One hard-sharing
MLP per run, the same seed, data split and optimiser for every method. Reports per-task test
accuracy, Delta_m% (mean relative accuracy change against the single-task models, as in LibMTL)
and the wall time of a training step relative to equal weighting, measured round-robin over all
methods (median of several rounds) so that load on a shared machine affects them alike.

    PYTHONPATH=src python benchmarks/mtl_methods.py [--epochs 12] [--out benchmarks/results/mtl_methods.json]
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
        "db_mtl", "upgrad", "dualproj", "config",
    ]
]
METHODS.insert(1, ("static (1, .5, .5)", {"balancer": {"name": "static", "weights": {"digit": 1.0, "parity": 0.5, "large": 0.5}}}))
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


def time_steps(methods: list[tuple[str, dict]], train: dict, hidden: list[int], rounds: int, steps: int) -> dict[str, float]:
    """Median ms per training step of each method, measured round-robin so that load drift on a shared
    machine affects every method alike."""
    x, names = train["x"][:64], NAMES
    runs = {}
    for label, mtl in methods:
        torch.manual_seed(0)
        model = build_model(model_cfg.HardSharing(trunk=model_cfg.MLPTrunk(hidden=hidden)), [40], TASKS)
        obj = build_objective(MTLConfig.model_validate(mtl), names)
        runs[label] = [model, obj, obj.init(), torch.optim.Adam(model.parameters(), lr=2e-3), []]
    gen = torch.Generator().manual_seed(0)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--timing-rounds", type=int, default=7)
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/mtl_methods.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load(a.samples, a.seed)
    started = time.time()
    single = {t.name: run({}, [t], train, test, a.epochs, a.seed, a.hidden)["accuracy"][t.name] for t in TASKS}
    rows = []
    for label, mtl in METHODS:
        r = run(mtl, TASKS, train, test, a.epochs, a.seed, a.hidden)
        dm = 100 * float(np.mean([(r["accuracy"][t] - single[t]) / single[t] for t in NAMES]))
        rows.append({"method": label, "config": mtl, "accuracy": r["accuracy"], "delta_m": dm, "train_step_ms": r["step_ms"]})
        print(f"{label:32s} {r['accuracy']} dm={dm:+.2f}", flush=True)
    timing = time_steps(METHODS, train, a.hidden, a.timing_rounds, a.timing_steps)
    base = timing["equal"]
    for r in rows:
        r["step_ms"] = timing[r["method"]]
        r["relative_step_time"] = r["step_ms"] / base
    lines = [
        "| method | digit | parity | large | Δm% | step time (× equal) |",
        "|---|---|---|---|---|---|",
        f"| single-task | {single['digit']:.3f} | {single['parity']:.3f} | {single['large']:.3f} | 0.00 | — |",
    ]
    lines += [
        f"| {r['method']} | {r['accuracy']['digit']:.3f} | {r['accuracy']['parity']:.3f} | {r['accuracy']['large']:.3f} "
        f"| {r['delta_m']:+.2f} | {r['relative_step_time']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    out = {
        "setup": {"samples": a.samples, "epochs": a.epochs, "seed": a.seed, "hidden": a.hidden, "batch": 64, "optimizer": "adam 2e-3", "threads": 1},
        "single_task": single,
        "methods": rows,
        "equal_step_ms": base,
        "wall_s": time.time() - started,
        "table_markdown": table,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
