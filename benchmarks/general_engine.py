"""Speed of the general vectorised engine on models and methods beyond the MLP: W3, W4, a user module, 10,000 clients.

Run as a script (not a test)::

    python benchmarks/general_engine.py            # every workload, 5 timed rounds after a warm-up round
    python benchmarks/general_engine.py --quick    # fewer rounds and clients (a smoke run)
    python benchmarks/general_engine.py --repeat 3 # each system three times, taking turns: the median run
    python benchmarks/general_engine.py --device cuda --only W3,scale   # on a GPU (benchmarks/gpu.sh)

* **W3**: the demo's experiment with the CNN1D trunk (100 clients of MNIST-1D, 3 tasks, each client 2 of them,
  30 clients a round): vectorised vs sequential engine vs a bare PyTorch loop doing the same arithmetic
  (a Conv1d trunk and the client's heads, SGD with momentum, the same batches per client).
* **W4**: Ditto + PCGrad + MMoE on the demo's data: vectorised vs sequential.
* **DP-SGD**: W3 with sample-level DP-SGD (noise multiplier 1, clip 1): vectorised (per-example gradients
  under a second ``vmap``) vs sequential.
* **user module**: a model written here, not in fedmtl (depthwise-separable Conv1d blocks with LayerNorm and a
  `heads` ModuleDict), given to ``Experiment``-style construction as any user would: vectorised vs sequential.
* **scale**: one round of 2,500 / 5,000 / 10,000 clients (all in the cohort) with the MLP: seconds and peak memory.

Each (workload, system) runs in its own subprocess; it reports its training seconds (the rounds only, after
one warm-up round), the final held-out accuracy per task and its peak resident memory. Prints Markdown
tables and writes ``benchmarks/results/general_engine.json``.

``--device cuda`` (``runtime.device``) puts the vectorised engine's computations and the bare loop on the GPU;
the sequential engine stays on the CPU, as it does in fedmtl (docs/engines.md, "Device"), so its column is the
CPU reference. Rounds are timed after the GPU has finished them (``torch.cuda.synchronize``), and each worker
reports its peak GPU memory too.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from _common import merge, synchronize  # noqa: E402

DEMO = {
    "seed": 0,
    "data": {
        "source": {"name": "mnist1d", "num_samples": 10000, "tasks": ["digit", "parity", "large"]},
        "num_clients": 100,
        "partition": {"name": "dirichlet", "alpha": 0.5},
        "task_assignment": {"name": "random_subset", "tasks_per_client": 2},
    },
    "model": {"name": "hard_sharing", "trunk": {"name": "cnn1d"}},
    "client": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
    "server": {"fraction": 0.3},
}


WORKLOADS = {
    "W3": DEMO,
    "W4": merge(DEMO, {"model": {"name": "mmoe", "trunk": None}, "algorithm": {"name": "ditto", "lam": 0.1}, "mtl": {"balancer": {"name": "pcgrad"}}}),
    "user module": DEMO,
    "DP-SGD": merge(DEMO, {"privacy": {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}}),
}
del WORKLOADS["W4"]["model"]["trunk"]


def user_module(input_shape, tasks):  # noqa: ANN001, ANN201
    """The benchmark's own model: nothing of it comes from fedmtl."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, ch: int, length: int):
            super().__init__()
            self.depthwise = nn.Conv1d(ch, ch, 5, padding=2, groups=ch)
            self.pointwise = nn.Conv1d(ch, ch, 1)
            self.norm = nn.LayerNorm([ch, length])

        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.relu(self.norm(x + self.pointwise(self.depthwise(x))))

    class Net(nn.Module):
        def __init__(self, length: int, ch: int = 16):
            super().__init__()
            self.stem = nn.Conv1d(1, ch, 3, padding=1)
            self.blocks = nn.Sequential(Block(ch, length), Block(ch, length))
            self.pool = nn.AdaptiveAvgPool1d(8)
            self.fc = nn.Linear(ch * 8, 64)
            self.heads = nn.ModuleDict({t.name: nn.Linear(64, t.output_dim) for t in tasks})

        def forward(self, x):  # noqa: ANN001, ANN202
            z = torch.relu(self.fc(self.pool(self.blocks(self.stem(x.unsqueeze(1)))).flatten(1)))
            return {name: head(z) for name, head in self.heads.items()}

    return Net(int(math.prod(input_shape)))


# ------------------------------------------------------------------------------------------ workers
def _setup(config: dict, engine: str, user: bool, device: str = "cpu"):  # noqa: ANN202
    import torch

    from fedmtl.config import config_from_dict
    from fedmtl.data import build_federated_data
    from fedmtl.engine import make_federation
    from fedmtl.mtl import build_model
    from fedmtl.mtl.factory import as_model

    cfg = config_from_dict(merge(config, {"engine": {"name": engine}, "runtime": {"device": device}}))
    data = build_federated_data(cfg.data, cfg.seed)
    torch.manual_seed(0)
    model = as_model(user_module, data.input_shape, data.tasks) if user else build_model(cfg.model, data.input_shape, data.tasks)
    return cfg, data, model, make_federation(cfg, data, model)


def _accuracy(fed, params) -> dict[str, float]:  # noqa: ANN001
    from fedmtl.runloop.evaluation import evaluate_global

    return {t: round(m.get("accuracy", m.get("r2", float("nan"))), 4) for t, m in evaluate_global(fed.model, params, fed.data, 512).items()}


def worker_fedmtl(workload: str, engine: str, rounds: int, device: str = "cpu") -> dict:
    cfg, data, model, fed = _setup(WORKLOADS[workload], engine, workload == "user module", device)
    state = fed.init_state()
    t0 = time.perf_counter()
    state, _ = fed.round(state)  # warm-up (first vmap traces, allocator)
    synchronize(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        state, _ = fed.round(state)
        synchronize(device)
        times.append(time.perf_counter() - t)
    engine_clients = getattr(fed.engine, "last_run", {})
    return {"warmup_seconds": warm, "round_seconds": times, "seconds": sum(times), "accuracy": _accuracy(fed, state.params), "engine_clients": engine_clients}


def worker_bare(workload: str, rounds: int, device: str = "cpu") -> dict:
    """W3 by hand: per client, a Conv1d trunk (fedmtl's layers: Conv1d, ReLU, its max pooling) + its tasks' heads,
    SGD with momentum, FedAvg per group."""
    import torch
    from torch import nn

    from fedmtl.fl.batching import batch_plan
    from fedmtl.fl.seeding import generator
    from fedmtl.mtl.models.trunks import WindowMaxPool1d  # the trunk's pooling: the same arithmetic

    cfg, data, model, fed = _setup(WORKLOADS[workload], "sequential", False)
    state = fed.init_state()
    params = {n: p.clone().to(device) for n, p in state.params.items()}
    trunk_names = [n for n in params if n.startswith("trunk.")]

    def build(tasks):  # noqa: ANN001, ANN202
        ch = [32, 32]
        layers, c, length = [], 1, data.input_shape[0]
        for out in ch:
            layers += [nn.Conv1d(c, out, 5, padding=2), nn.ReLU(), WindowMaxPool1d(2)]
            c, length = out, length // 2
        trunk = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * length, 128), nn.ReLU())
        heads = nn.ModuleDict({t: nn.Linear(128, data.task(t).output_dim) for t in tasks})
        return trunk.to(device), heads.to(device)

    def run_round(r: int) -> None:
        cohort = fed.cohort(r)
        sums: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        for cid in cohort:
            client = data.clients[cid]
            trunk, heads = build(client.tasks)
            named = {**{f"trunk.{k}": v for k, v in _trunk_names(trunk)}, **{f"heads.{t}.0.{k}": v for t in client.tasks for k, v in heads[t].named_parameters()}}
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(params[n])
            opt = torch.optim.SGD(list(named.values()), lr=0.1, momentum=0.5)
            gen = generator(cfg.seed, "client", r, cid)
            x, ys = client.train.x.to(device), {t: client.train.y[t].to(device) for t in client.tasks}
            for batches in batch_plan(len(client.train), 16, 2, gen):
                for idx in batches:
                    z = trunk(x[idx.to(device)].unsqueeze(1))
                    loss = sum(data.task(t).loss(heads[t](z), ys[t][idx.to(device)]) for t in client.tasks)
                    opt.zero_grad()
                    loss.backward()  # type: ignore[union-attr]
                    opt.step()
            for n, p in named.items():
                w = float(len(client.train))
                sums[n] = sums.get(n, 0) + w * (p.detach() - params[n])
                weights[n] = weights.get(n, 0.0) + w
        for n in sums:
            params[n] = params[n] + sums[n] / weights[n]

    def _trunk_names(trunk):  # noqa: ANN001, ANN202
        # fedmtl's CNN1D trunk names: conv.{0,3}.*, fc.0.*
        mapping = {"0": "conv.0", "3": "conv.3", "7": "fc.0"}
        for k, v in trunk.named_parameters():
            i, _, rest = k.partition(".")
            yield f"{mapping[i]}.{rest}", v

    assert all(n.startswith(("trunk.", "heads.")) for n in params) and trunk_names
    run_round(0)
    synchronize(device)
    times = []
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        run_round(r)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return {"round_seconds": times, "seconds": sum(times), "accuracy": _accuracy(fed, {n: p.cpu() for n, p in params.items()})}


def worker_scale(clients: int, device: str = "cpu") -> dict:
    from fedmtl.config import config_from_dict
    from fedmtl.data import build_federated_data
    from fedmtl.engine import make_federation
    from fedmtl.mtl import build_model

    cfg = config_from_dict(
        {
            "data": {"source": {"name": "mnist1d", "num_samples": 12 * clients, "tasks": ["digit", "parity"]}, "num_clients": clients, "partition": {"name": "iid"}},
            "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [128, 128]}},
            "client": {"epochs": 1, "batch_size": 16},
            "server": {"clients_per_round": clients},
            "runtime": {"device": device},
        }
    )
    data = build_federated_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    fed = make_federation(cfg, data, model)
    state = fed.init_state()
    t = time.perf_counter()
    fed.round(state)
    synchronize(device)
    return {"seconds": time.perf_counter() - t}


def worker_main(ns: argparse.Namespace) -> None:
    if ns.worker == "bare":
        res = worker_bare(ns.workload, ns.rounds, ns.device)
    elif ns.worker == "scale":
        res = worker_scale(ns.clients, ns.device)
    else:
        res = worker_fedmtl(ns.workload, ns.worker, ns.rounds, ns.device)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if ns.device.startswith("cuda"):
        import torch

        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(res))


def run_worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 timed rounds, scale up to 2,500 clients")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per run (default 5; --quick 2)")
    ap.add_argument("--only", default="", help="comma-separated subset: W3,W4,user module,DP-SGD,scale")
    ap.add_argument("--out", default=str(HERE / "results" / "general_engine.json"))
    ap.add_argument("--worker", default=None)
    ap.add_argument("--workload", default="W3")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each (workload, system), taking turns; the table shows the median run")
    ap.add_argument("--device", default="cpu", help="runtime.device of the vectorised engine and the bare loop: cpu, cuda or cuda:N")
    ns = ap.parse_args()
    rounds = ns.rounds or (2 if ns.quick else 5)
    ns.rounds = rounds
    if ns.worker:
        worker_main(ns)
        return
    from fedmtl.engine.device import resolve_device

    resolve_device(ns.device)  # no such device: the error before any run
    only = {s.strip() for s in ns.only.split(",") if s.strip()}
    results: dict = {"rounds": rounds, "workloads": {}, "scale": {}}
    import torch

    results["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0], "device": ns.device}
    if ns.device.startswith("cuda"):
        results["machine"]["gpu"] = torch.cuda.get_device_name(torch.device(ns.device))
    for name in WORKLOADS:
        if only and name not in only:
            continue
        systems = ["vectorized", "sequential"] + (["bare"] if name == "W3" else [])
        runs: dict[str, list[dict]] = {system: [] for system in systems}
        for repeat in range(ns.repeat):  # the systems take turns, so a drift of the host's speed hits them all
            for system in systems:
                print(f"[{name}] {system} ({repeat + 1}/{ns.repeat}) ...", flush=True)
                runs[system].append(run_worker(system, "--workload", name, "--rounds", str(rounds), "--device", ns.device))
                print("   ", runs[system][-1], flush=True)
        results["workloads"][name] = {system: median_run(rs) for system, rs in runs.items()}
    if not only or "scale" in only:
        for clients in (1000, 2500) if ns.quick else (2500, 5000, 10000):
            print(f"[scale] {clients} clients ...", flush=True)
            results["scale"][clients] = run_worker("scale", "--clients", str(clients), "--device", ns.device)
            print("   ", results["scale"][clients], flush=True)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(results, indent=2))
    print(table(results))


def _per_round(run: dict) -> float:
    return float(run["seconds"] / len(run["round_seconds"]))


def median_run(runs: list[dict]) -> dict:
    """The run with the median seconds per round (the first error, if any run failed), with every run's
    seconds per round beside it (``runs_per_round``, sorted)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=_per_round)
    return {**ordered[(len(ordered) - 1) // 2], "runs_per_round": [_per_round(r) for r in ordered]}


def table(results: dict) -> str:
    device = results.get("machine", {}).get("device", "cpu")
    lines = [] if device == "cpu" else [f"vectorized and bare on {device} ({results['machine'].get('gpu', '')}); sequential on the CPU; peak GPU MiB in the JSON", ""]
    lines += ["| workload | system | s / round | every run | vs sequential | vs bare loop | peak MiB | held-out accuracy |", "|---|---|---|---|---|---|---|---|"]
    for name, row in results["workloads"].items():
        per = {s: (_per_round(r) if "seconds" in r else float("nan")) for s, r in row.items()}
        for system, r in row.items():
            if "error" in r:
                lines.append(f"| {name} | {system} | error: {r['error']} | | | | | |")
                continue
            vs_seq = per.get("sequential", float("nan")) / per[system]
            vs_bare = per["bare"] / per[system] if "bare" in per else float("nan")
            every = ", ".join(f"{x:.2f}" for x in r.get("runs_per_round", [per[system]]))
            acc = " / ".join(f"{t} {a:.3f}" for t, a in r["accuracy"].items())
            lines.append(f"| {name} | {system} | {per[system]:.2f} | {every} | {vs_seq:.1f}x | {'' if math.isnan(vs_bare) else f'{vs_bare:.1f}x'} | {r['peak_rss_mb']:.0f} | {acc} |")
    if results["scale"]:
        lines += ["", "| clients in one round | seconds | peak MiB |", "|---|---|---|"]
        for clients, r in results["scale"].items():
            lines.append(f"| {clients} | {r.get('seconds', float('nan')):.1f} | {r.get('peak_rss_mb', float('nan')):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
