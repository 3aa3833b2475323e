"""Whole federated runs per codec chain, per server optimiser, and per aggregator under attack.

Three tables, one JSON (``benchmarks/results/comm_federated.json``):

1. **Codecs** on the canonical workload (FedAvg, MNIST-1D, 100 IID clients, MLP 40-256-256-10,
   5 local epochs of SGD, batch 32, lr 0.3; ``--rounds``, default 20): uplink and downlink bytes,
   ratio to fp32, final accuracy and its change against fp32.
2. **Server optimisers** on a non-IID multi-task workload (Dirichlet alpha = 0.3, tasks digit and
   parity, 30 of 100 clients per round): final accuracy per task.
3. **Robust aggregation** with 20 % Byzantine clients (sign flip, scale 4) on the canonical workload:
   final accuracy per aggregator, with the no-attack FedAvg figure as the reference.

4. ``--pareto``: the bytes-vs-accuracy front on the demo experiment (``src/fedmtl/configs/demo.yaml``):
   each chain a point, bytes both directions, final held-out accuracy per task as mean ± std over
   ``--seeds`` seeds (default 3), ``--rounds`` rounds (default 40, the demo's); finished runs are kept in
   ``benchmarks/results/comm_pareto_runs.jsonl`` and reused;
   ``benchmarks/results/comm_pareto.json`` and ``comm_pareto.png``.

Run: ``PYTHONPATH=src python benchmarks/comm_federated.py [--quick | --pareto]``.
"""

from __future__ import annotations

import argparse
import json
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


# -- the bytes-vs-accuracy Pareto front (issue 22) ---------------------------------------------------------------------
DEMO = Path(__file__).parents[1] / "src" / "fedmtl" / "configs" / "demo.yaml"
DEMO_OPTIMIZER = {"name": "fedavgm", "lr": 1.0, "momentum": 0.9}
#: each point: (uplink chain, downlink chain, downlink_delta chain); fp32 is the reference
ZSTD = {"name": "zstd", "level": 19, "dictionary": 1}
FP32 = [{"name": "identity"}]


def _psgd(rank: int) -> list[dict]:
    """PowerSGD (int8 factors) then zstd: conv kernels as out x (in k) matrices, error feedback."""
    return [{"name": "powersgd", "rank": rank, "bits": 8}, ZSTD]


def _delta(full_bits: int, *delta: dict) -> tuple[list[dict], list[dict]]:
    """A full model in ``full_bits``-bit blocks for clients without a copy, the others ``delta`` of (model - copy)."""
    return [{"name": "blockq", "bits": full_bits}], [*delta, ZSTD]


SIGN = {"name": "sign"}


def _dgc(fraction: float) -> list[dict]:
    """Top-``fraction`` with error feedback (DGC without momentum correction or warm-up), 4-bit values, zstd."""
    return [{"name": "dgc", "fraction": fraction, "momentum": 0.0, "warmup": 0}, {"name": "blockq", "bits": 4}, ZSTD]


def _dgcm(fraction: float, momentum: float = 0.9, warmup: int = 4) -> list[dict]:
    """DGC as published: momentum correction and masking, the sparsity warm-up, 4-bit values, zstd."""
    return [{"name": "dgc", "fraction": fraction, "momentum": momentum, "warmup": warmup}, {"name": "blockq", "bits": 4}, ZSTD]


def _ef21(*chain: dict) -> list[dict]:
    """An EF21 uplink chain (``comm.uplink_ef21``): its codecs without error feedback, then zstd."""
    return [{**c, "error_feedback": False} if c["name"] in ("dgc", "topk", "sign", "powersgd") else c for c in chain] + [ZSTD]


#: the comm settings besides the chains of an EF21 point (the fifth entry of a point)
EF21 = {"uplink_ef21": True}


def _top(fraction: float) -> dict:
    return {"name": "topk", "fraction": fraction}


def _sparse(fraction: float, masking: bool) -> dict:
    """FedAvgM (the demo's lr 1, momentum 0.9) with the server's error feedback and a top-``fraction`` step."""
    return {"name": "sparse_fedavgm", "lr": 1.0, "momentum": 0.9, "fraction": fraction, "momentum_masking": masking}


def _gap(fraction: float) -> dict:
    """Top-``fraction`` with gap-coded indices (dgc without momentum or warm-up: stateless, for the downlink)."""
    return {"name": "dgc", "fraction": fraction, "momentum": 0.0, "warmup": 0}


DGC1 = _dgc(0.01)
BQ4 = {"name": "blockq", "bits": 4}
GAP25 = _delta(4, _gap(0.25), {"name": "blockq", "bits": 4})
GAP50 = _delta(4, _gap(0.5), {"name": "blockq", "bits": 4})
#: plain averaging (no server momentum), for the compressed runs and their own fp32 reference
FEDAVG = {"name": "fedavg", "lr": 1.0}
#: less server momentum (an effective step of 3.3x the averaged update instead of 10x)
FEDAVGM7 = {"name": "fedavgm", "lr": 1.0, "momentum": 0.7}
#: more server momentum (20x)
FEDAVGM95 = {"name": "fedavgm", "lr": 1.0, "momentum": 0.95}
TOP10 = _delta(4, _top(0.1), {"name": "blockq", "bits": 4})
TOP25 = _delta(8, _top(0.25), {"name": "blockq", "bits": 4})
def _bitmaps(up: float, down: float) -> tuple[list[dict], list[dict], list[dict]]:
    """Top-``up`` with error feedback up, top-``down`` differences down, the kept coordinates as bitmaps, 4-bit values."""
    return ([{**_gap(up), "index_coding": "bitmap"}, BQ4, ZSTD], *_delta(4, {**_gap(down), "index_coding": "bitmap"}, BQ4))


#: the recommended pair (examples/configs/compressed.yaml)
BITMAP20_50 = _bitmaps(0.2, 0.5)
PARETO = {
    "fp32": (FP32, FP32, []),
    "up powersgd r1 + zstd (fp32 factors)": ([{"name": "powersgd", "rank": 1}, ZSTD], FP32, []),
    "up powersgd r1 int8 + zstd": (_psgd(1), FP32, []),
    "up powersgd r2 int8 + zstd": (_psgd(2), FP32, []),
    "up powersgd r4 int8 + zstd": (_psgd(4), FP32, []),
    "up powersgd r8 int8 + zstd": (_psgd(8), FP32, []),
    "up qsgd s=1/2048 + zstd": ([{"name": "qsgd", "levels": 1, "bucket_size": 2048}, ZSTD], FP32, []),
    "up dgc 1% + blockq4 + zstd": (DGC1, FP32, []),
    "up dgc 3% + blockq4 + zstd": (_dgc(0.03), FP32, []),
    "up dgc 5% + blockq4 + zstd": (_dgc(0.05), FP32, []),
    "up dgc 10% + blockq4 + zstd": (_dgc(0.1), FP32, []),
    "up blockq2/256 + zstd": ([{"name": "blockq", "bits": 2, "block_size": 256}, ZSTD], FP32, []),
    # DGC's momentum correction and warm-up (Lin et al., 2018) on the CNN demo, with the demo's FedAvgM (momentum
    # twice; with plain averaging, where the correction stands in for the server's momentum: below)
    "up dgc 5% m0.9 warm-up 4 + blockq4 + zstd": (_dgcm(0.05), FP32, []),
    "up dgc 5% m0.5 warm-up 4 + blockq4 + zstd": (_dgcm(0.05, 0.5), FP32, []),
    "up dgc 5% warm-up 4 (no momentum) + blockq4 + zstd": (_dgcm(0.05, 0.0), FP32, []),
    # EF21 (Richtárik et al., 2021): the uplink sends C(update - g_i), client and server keep g_i
    "up ef21 top 1% + blockq4 + zstd": (_ef21(_gap(0.01), BQ4), FP32, [], None, EF21),
    "up ef21 top 3% + blockq4 + zstd": (_ef21(_gap(0.03), BQ4), FP32, [], None, EF21),
    "up ef21 top 5% + blockq4 + zstd": (_ef21(_gap(0.05), BQ4), FP32, [], None, EF21),
    "up ef21 top 10% + blockq4 + zstd": (_ef21(_gap(0.1), BQ4), FP32, [], None, EF21),
    "up ef21 blockq2/256 + zstd": (_ef21({"name": "blockq", "bits": 2, "block_size": 256}), FP32, [], None, EF21),
    "up ef21 blockq4 + zstd": (_ef21(BQ4), FP32, [], None, EF21),
    "down blockq8 / delta sign + zstd": (FP32, *_delta(8, SIGN)),
    "down blockq4 / delta sign + zstd": (FP32, *_delta(4, SIGN)),
    "down blockq4 / delta top 5% + blockq4 + zstd": (FP32, *_delta(4, {"name": "topk", "fraction": 0.05}, {"name": "blockq", "bits": 4})),
    "down blockq4 / delta top 10% + blockq4 + zstd": (FP32, *TOP10),
    "down blockq8 / delta top 25% + blockq4 + zstd": (FP32, *TOP25),
    "down blockq8 / delta blockq2/64 + zstd": (FP32, *_delta(8, {"name": "blockq", "bits": 2, "block_size": 64})),
    "both: up powersgd r2 int8 / down blockq8 + delta sign": (_psgd(2), *_delta(8, SIGN)),
    "both: up dgc 1% / down blockq4 + delta top 10%": (DGC1, *TOP10),
    "both: up dgc 10% / down blockq8 + delta top 25%": (_dgc(0.1), *TOP25),
    # differences with gap-coded indices (dgc without momentum or warm-up), the first copies in 4-bit blocks
    "down blockq4 / delta gap-coded top 50% + blockq4 + zstd": (FP32, *GAP50),
    "down blockq4 / delta gap-coded top 25% + blockq4 + zstd": (FP32, *GAP25),
    "down blockq4 / delta gap-coded top 20% + blockq2 + zstd": (FP32, *_delta(4, _gap(0.2), {"name": "blockq", "bits": 2})),
    "down blockq4 / delta gap-coded top 15% + blockq4 + zstd": (FP32, *_delta(4, _gap(0.15), {"name": "blockq", "bits": 4})),
    "both: up dgc 10% / down blockq4 + delta gap-coded top 25%": (_dgc(0.1), *GAP25),
    "both: up dgc 10% / down blockq4 + delta gap-coded top 50%": (_dgc(0.1), *GAP50),
    "both: up dgc 20% / down blockq4 + delta gap-coded top 50%": (_dgc(0.2), *GAP50),
    "both: up dgc 20% / down blockq4 + delta gap-coded top 25%": (_dgc(0.2), *GAP25),
    "both: up dgc 15% / down blockq4 + delta gap-coded top 50%": (_dgc(0.15), *GAP50),
    "both: up dgc 20% / down blockq4 + delta gap-coded top 35%": (_dgc(0.2), *_delta(4, _gap(0.35), {"name": "blockq", "bits": 4})),
    # the recommended pair with a bit per coordinate for the kept coordinates instead of gap-coded int32s (the same
    # coordinates and values, so the same training; fewer bytes)
    "both: up dgc 20% / down blockq4 + delta top 50% with bitmap indices (examples/configs/compressed.yaml)": BITMAP20_50,
    # 2-bit values for the uplink's kept coordinates (their rounding error goes to the residual too)
    "both: up dgc 20% + blockq2 / down blockq4 + delta gap-coded top 50%": (
        [_gap(0.2), {"name": "blockq", "bits": 2}, ZSTD],
        *GAP50,
    ),
    "both: up dgc 30% + blockq2 / down blockq4 + delta gap-coded top 50%": (
        [_gap(0.3), {"name": "blockq", "bits": 2}, ZSTD],
        *GAP50,
    ),
    # server-side choices (their own optimiser; the reference stays the demo's FedAvgM in fp32): plain averaging,
    # and the server's error feedback (FetchSGD's server step, fedmtl.fl.server_sparse: the model moves on the top
    # 5 % of the server's accumulated error a round, so that (model - copy) would be sparse)
    "fedavg: fp32": (FP32, FP32, [], FEDAVG),
    "fedavg: up dgc 5% m0.9 warm-up 4 + blockq4 + zstd": (_dgcm(0.05), FP32, [], FEDAVG),
    "fedavgm 0.7: fp32": (FP32, FP32, [], FEDAVGM7),
    "fedavgm 0.7: up dgc 10% / down blockq4 + delta gap-coded top 25%": (_dgc(0.1), *GAP25, FEDAVGM7),
    "fedavgm 0.95: fp32": (FP32, FP32, [], FEDAVGM95),
    "fedavgm 0.95: up dgc 10% / down blockq4 + delta gap-coded top 25%": (_dgc(0.1), *GAP25, FEDAVGM95),
    "server top 5% (masked)": (FP32, FP32, [], _sparse(0.05, True)),
    "server top 5%": (FP32, FP32, [], _sparse(0.05, False)),
    # how much a round must move for FetchSGD's server step to keep the accuracy (its sketch must recover that many)
    "server top 20% (masked)": (FP32, FP32, [], _sparse(0.2, True)),
    "server top 50% (masked)": (FP32, FP32, [], _sparse(0.5, True)),
    "server top 20%": (FP32, FP32, [], _sparse(0.2, False)),
    "server top 50%": (FP32, FP32, [], _sparse(0.5, False)),
    # the server's top-k step with compressed chains: the model moves on fewer coordinates, so a client's difference
    # (model - copy) is sparser
    "server top 50%: up dgc 20% / down blockq4 + delta top 50% with bitmap indices": (*BITMAP20_50, _sparse(0.5, False)),
    "server top 50%: up dgc 20% / down blockq4 + delta top 25% with bitmap indices": (*_bitmaps(0.2, 0.25), _sparse(0.5, False)),
    "server top 20%: up dgc 20% / down blockq4 + delta top 25% with bitmap indices": (*_bitmaps(0.2, 0.25), _sparse(0.2, False)),
    "server top 50%: up dgc 10% / down blockq4 + delta top 50% with bitmap indices": (*_bitmaps(0.1, 0.5), _sparse(0.5, False)),
}


def _with_point(demo: dict, seed: int, point: tuple) -> dict:
    """The demo's config with a point's chains and seed, its server optimiser (its optional fourth entry, None: the
    demo's; replaced whole, not merged into the demo's) and further comm settings (its optional fifth, EF21's flag)."""
    extra = point[4] if len(point) > 4 else {}
    cfg = merge(demo, {"seed": seed, "comm": {"uplink": point[0], "downlink": point[1], "downlink_delta": point[2], **extra}})
    if len(point) > 3 and point[3] is not None:
        cfg["server"]["optimizer"] = dict(point[3])
    return cfg


#: finished Pareto runs, one JSON line each, keyed by what decides them (chains, seed, rounds): a rerun (or one with
#: more points or seeds) reuses them instead of training again
RUNS = Path(__file__).parent / "results" / "comm_pareto_runs.jsonl"


def _run_key(cfg: dict) -> str:
    key = {"comm": cfg.get("comm", {}), "seed": cfg["seed"], "rounds": cfg["server"]["rounds"]}
    if cfg["server"].get("optimizer") != DEMO_OPTIMIZER:  # the demo's optimiser is left out: the older keys lack it
        key["optimizer"] = cfg["server"].get("optimizer")
    return json.dumps(key, sort_keys=True)


def _cached_runs() -> dict[str, dict]:
    if not RUNS.exists():
        return {}
    rows = (json.loads(line) for line in RUNS.read_text().splitlines() if line.strip())
    return {r["key"]: r["record"] for r in rows}


def _pareto_job(job: tuple[str, int, dict, str]) -> tuple[str, dict]:
    name, seed, cfg, out = job
    torch.set_num_threads(1)
    s = run(cfg, Path(out), f"pareto-{abs(hash(name)) % 10**8}-{seed}")
    acc = {t: float(v["accuracy"]) for t, v in s["final_global"].items() if isinstance(v, dict) and "accuracy" in v}
    rec = {
        "seed": seed,
        "bytes_up": s["bytes_up_total"],
        "bytes_down": s["bytes_down_total"],
        "accuracy": acc,
        "engine_clients": s.get("engine_clients", {}),
        "seconds": s["benchmark_seconds"],
    }
    with RUNS.open("a") as f:  # one line per run: appends from parallel workers do not interleave
        f.write(json.dumps({"key": _run_key(cfg), "record": rec}) + "\n")
    print(f"pareto {name} seed {seed}: {rec}", flush=True)
    return name, rec


def pareto(rounds: int, seeds: list[int], out: Path, workers: int = 1) -> dict:
    """Each chain a point, both directions: total bytes each way and final held-out accuracy per task, mean ± std over seeds."""
    import statistics
    from concurrent.futures import ProcessPoolExecutor

    import yaml

    demo = yaml.safe_load(DEMO.read_text())
    demo = merge(demo, {"server": {"rounds": rounds}, "evaluation": {"every": rounds, "personalized": False}})
    jobs = [
        (name, seed, _with_point(demo, seed, p), str(out))
        for name, p in PARETO.items()
        for seed in seeds
    ]
    cached = _cached_runs()
    done = [(name, cached[_run_key(cfg)]) for name, _, cfg, _ in jobs if _run_key(cfg) in cached]
    todo = [job for job in jobs if _run_key(job[2]) not in cached]
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done += list(pool.map(_pareto_job, todo))
    points: dict = {}
    for name, (up, down, delta, *rest) in PARETO.items():
        server = [o for o in rest[:1] if o is not None]
        runs = sorted((rec for n, rec in done if n == name), key=lambda r: r["seed"])
        tasks = sorted(runs[0]["accuracy"])
        stat = {t: (statistics.mean(r["accuracy"][t] for r in runs), statistics.stdev(r["accuracy"][t] for r in runs) if len(runs) > 1 else 0.0) for t in tasks}
        points[name] = {
            "chains": {"uplink": up, "downlink": down, "downlink_delta": delta, **(rest[1] if len(rest) > 1 else {})},
            **({"server_optimizer": server[0]} if server else {}),
            "runs": runs,
            "bytes_up": statistics.mean(r["bytes_up"] for r in runs),
            "bytes_down": statistics.mean(r["bytes_down"] for r in runs),
            "accuracy": {t: {"mean": m, "std": sd} for t, (m, sd) in stat.items()},
        }
    ref = points["fp32"]
    rows = []
    for name, p in points.items():
        mean = statistics.mean(a["mean"] for a in p["accuracy"].values())
        delta_pts = min(100 * (p["accuracy"][t]["mean"] - ref["accuracy"][t]["mean"]) for t in p["accuracy"])
        p["mean_accuracy"], p["worst_task_delta_points"] = mean, delta_pts
        accs = ", ".join(f"{t} {a['mean']:.3f} ± {a['std']:.3f}" for t, a in p["accuracy"].items())
        rows.append([name, f"{ref['bytes_up'] / p['bytes_up']:.1f}x", f"{ref['bytes_down'] / p['bytes_down']:.1f}x", accs, f"{delta_pts:+.1f}"])
    table = markdown_table(["chain", "fewer bytes up", "fewer bytes down", "held-out accuracy (mean ± std)", "worst task Δ points"], rows)
    return {"rounds": rounds, "seeds": seeds, "points": points, "table": table}


def plot_pareto(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(result["points"]) // 2)  # the legend's rows, two columns under the plots
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 + 0.17 * rows), sharey=True)
    ref = result["points"]["fp32"]
    for ax, direction in zip(axes, ("bytes_up", "bytes_down")):
        for i, (name, p) in enumerate(result["points"].items()):
            means = [a["mean"] for a in p["accuracy"].values()]
            stds = [a["std"] for a in p["accuracy"].values()]
            style = {"fmt": "osD^v<>ph*"[i % 10], "color": plt.get_cmap("tab20")(i % 20)}
            ax.errorbar(ref[direction] / p[direction], sum(means) / len(means), yerr=max(stds), capsize=3, label=name, **style)
        ax.set_xscale("log")
        ax.set_xlabel(f"fewer {'uplink' if direction == 'bytes_up' else 'downlink'} bytes than fp32 (x)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean held-out accuracy over tasks")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(f"demo experiment, {result['rounds']} rounds, {len(result['seeds'])} seed(s) (bar: largest task std)")
    fig.tight_layout(rect=(0, 0.17 * rows / (4.2 + 0.17 * rows) + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy(summary: dict, task: str = "digit") -> float:
    return float(summary["final_global"][task]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 rounds and fewer variants: a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pareto", action="store_true", help="only the bytes-vs-accuracy front on the demo experiment")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per Pareto point")
    parser.add_argument("--workers", type=int, default=1, help="Pareto runs in parallel (one thread each)")
    parser.add_argument("--points", default="", help="comma-separated Pareto point names (default: all)")
    parser.add_argument("--out", default="comm_pareto", help="name of the Pareto JSON and PNG in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.pareto:
        if args.points:
            for name in [n for n in PARETO if n not in args.points.split(",") and n != "fp32"]:  # fp32: the reference
                del PARETO[name]
        result = pareto(args.rounds or 40, list(range(args.seeds)), Path(tempfile.mkdtemp(prefix="fedmtl-bench-")), args.workers)
        result["machine"] = machine()
        path = write_json(args.out, result)
        plot_pareto(result, path.with_suffix(".png"))
        print("\n" + result["table"] + f"\n\nwrote {path} and {path.with_suffix('.png')}")
        return
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
        results["optimizers"][name] = {"digit": accuracy(s), "parity": accuracy(s, "parity"), "personalized_mean": s["personalised_client_mean"]}
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
