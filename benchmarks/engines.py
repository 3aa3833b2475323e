"""Speed benchmark: fedmtl's engines vs a bare PyTorch loop vs Flower's simulation engine.

Run as a script (not a test)::

    python benchmarks/engines.py                 # W1, W2 (1,000 and 10,000 clients), scale sweep, plot
    python benchmarks/engines.py --quick         # smoke run: W1 with 4 rounds (accuracies not yet comparable), W2 1,000, no sweep
    python benchmarks/engines.py --skip-flower   # without the (slow) Flower baseline
    python benchmarks/engines.py --device cuda --workloads W1,W2-10k --skip-sweep   # on a GPU (benchmarks/gpu.sh)

Every system runs in its own subprocess on the same data (generated once, before any timing) from the
same initial model; the parent samples the resident memory of the subprocess and all its descendants
(Ray's raylet, GCS and workers for Flower) and reports the peak of the sum. Training wall seconds
start after the data is loaded and include every warm-up (Ray start, first calls, PyTorch's lazy imports:
constructing a process's first ``torch.optim`` optimiser imports ``torch._dynamo``, about a second, which the
bare loop and Flower's clients pay and fedmtl, stepping ``torch.optim``'s functional form, does not); "last
round s" is the wall time of the final round alone, the steady state (W2 has 2 rounds, so its "train s" is
mostly warm-up).

``--device cuda`` runs the vectorised engine (streamed round) and the bare loop on the GPU, timing each round
after the GPU has finished it (``torch.cuda.synchronize``); the other systems run on the CPU only and are left
out of such a run.

Writes ``benchmarks/results/engines.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import synchronize  # noqa: E402
from _workload import SMOKE, W1, W2, W2_10K, Workload, iid_split, init_params, mlp, mnist1d  # noqa: E402

WORKLOADS = {w.name: w for w in (W1, W2, W2_10K, SMOKE)}
# fedmtl-vectorized: vectorised engine + the Streamed transport (streamed, stacked reduction);
# fedmtl-vectorized-general: the same without the one-step identity (engine/one_step.py), for workloads whose
# clients all take one step (W2): the general stacked path's figure beside the identity's;
# fedmtl-vectorized-plainround: vectorised engine under the plain Federation round (per-client encode/decode)
SYSTEMS = ["fedmtl-sequential", "fedmtl-vectorized", "fedmtl-vectorized-general", "fedmtl-vectorized-plainround", "bare-pytorch", "flower"]


def _one_step(w: Workload, train_rows: int) -> bool:
    """Whether every client takes a single local step (one epoch, every client's rows in one batch)."""
    return w.epochs == 1 and max(len(p) for p in iid_split(train_rows, w.num_clients)) <= w.batch_size


# ---------------------------------------------------------------------------------------- memory
def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_worker(args: list[str], timeout: float) -> dict:
    """Run one system in a subprocess; return its JSON result plus the peak summed RSS of its process tree."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", *args, "--result", out], env=env, start_new_session=True
    )
    peak = 0
    load_before = os.getloadavg()[0]
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        done.set()
        t.join()
        try:
            os.killpg(proc.pid, 9)  # leftovers (Ray daemons) die with the session
        except ProcessLookupError:
            pass
    try:
        res = json.loads(Path(out).read_text())
    except (OSError, json.JSONDecodeError):
        res = {"error": f"worker failed (exit {proc.returncode})"}
    os.unlink(out)
    res["peak_rss_mb"] = round(peak / 2**20, 1)
    res["load_avg_1min"] = [
        round(load_before, 2),
        round(os.getloadavg()[0], 2),
    ]  # machine load before/after (2 cores)
    return res


# --------------------------------------------------------------------------------------- systems
def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _accuracy(layers: list, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    h = torch.from_numpy(x)
    for i in range(0, len(layers), 2):
        h = h @ layers[i].T + layers[i + 1]
        if i + 2 < len(layers):
            h = h.relu()
    return float((h.argmax(1).numpy() == y).mean())


def worker_bare(w: Workload, data: dict, threads: int, device: str = "cpu") -> dict:
    """FedAvg written plainly: one model, a fresh SGD per client, the weighted mean of client models."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    x, y = torch.from_numpy(data["x"]).to(device), torch.from_numpy(data["y"]).to(device)
    parts = [torch.from_numpy(p).to(device) for p in iid_split(len(x), w.num_clients)]
    model = mlp(w.hidden, x.shape[1]).to(device)
    glob = [g.to(device) for g in init_params(w.hidden)]
    total = len(x)
    per_round = []
    for r in range(w.rounds):
        tr = time.perf_counter()
        new = [torch.zeros_like(g) for g in glob]
        for cid, rows in enumerate(parts):
            with torch.no_grad():
                for p, g in zip(model.parameters(), glob):
                    p.copy_(g)
            opt = torch.optim.SGD(model.parameters(), lr=w.lr)
            xc, yc = x[rows], y[rows]
            gen = torch.Generator().manual_seed(r * 1_000_003 + cid)
            for _ in range(w.epochs):
                for idx in torch.randperm(len(rows), generator=gen).to(device).split(w.batch_size):
                    loss = F.cross_entropy(model(xc[idx]), yc[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                for acc, p in zip(new, model.parameters()):
                    acc.add_(p, alpha=len(rows) / total)
        glob = new
        synchronize(device)
        per_round.append(time.perf_counter() - tr)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "round_seconds": per_round, "accuracy": _accuracy([g.cpu() for g in glob], data["x_test"], data["y_test"])}


def _fedmtl_setup(
    w: Workload, data: dict, engine: str, tasks: tuple[str, ...] = ("digit",), clients: int | None = None
):
    """fedmtl objects for a workload, from the shared arrays (same split and initial model as the others)."""
    import torch

    from fedmtl.config import load_config
    from fedmtl.data.dataset import ClientData, FederatedData, Split
    from fedmtl.mtl import build_model
    from fedmtl.tasks import Task

    n_clients = clients or w.num_clients
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    targets = {"digit": y, "parity": (y % 2).float()}
    task_objs = tuple(
        Task("digit", "multiclass", 10) if t == "digit" else Task("parity", "binary") for t in tasks
    )
    parts = iid_split(len(x), w.num_clients)[:n_clients]
    empty = Split(torch.empty(0, x.shape[1]), {t: targets[t][:0] for t in tasks})
    clients_ = tuple(
        ClientData(cid, tasks, Split(x[rows], {t: targets[t][rows] for t in tasks}), empty)
        for cid, rows in enumerate(map(torch.from_numpy, parts))
    )
    yt = torch.from_numpy(data["y_test"])
    holdout = Split(torch.from_numpy(data["x_test"]), {"digit": yt, "parity": (yt % 2).float()})
    fed_data = FederatedData(
        task_objs, (x.shape[1],), clients_, Split(holdout.x, {t: holdout.y[t] for t in tasks})
    )
    cfg = load_config(
        None,
        [
            f"data.num_clients={n_clients}",
            f"server.clients_per_round={n_clients}",
            f"server.rounds={w.rounds}",
            "model.name=hard_sharing",
            "model.trunk.name=mlp",
            f"model.trunk.hidden={list(w.hidden)}",
            f"client.epochs={w.epochs}",
            f"client.batch_size={w.batch_size}",
            "client.optimizer.name=sgd",
            f"client.optimizer.lr={w.lr}",
            f"engine.name={engine}",
        ],
    )
    model = build_model(cfg.model, fed_data.input_shape, fed_data.tasks)
    return cfg, fed_data, model


def _fedmtl_init(model, w: Workload) -> dict:
    """The shared initial MLP under fedmtl's parameter names (trunk layers, then the digit head)."""
    names = [
        n for n, _ in model.named_parameters() if not n.startswith("heads.") or n.startswith("heads.digit.")
    ]
    init = dict(zip(names, init_params(w.hidden)))
    return {n: init.get(n, p.detach().clone()) for n, p in model.named_parameters()}


def worker_fedmtl(w: Workload, data: dict, threads: int, engine: str, streaming: bool, one_step: bool = True, device: str = "cpu") -> dict:
    import torch

    from fedmtl.engine import build_engine
    from fedmtl.engine.reducing import Streamed
    from fedmtl.fl.federation import Federation
    from fedmtl.fl.transport import InProcess

    torch.set_num_threads(threads)
    cfg, fed_data, model = _fedmtl_setup(w, data, engine)
    t0 = time.perf_counter()
    if cfg.engine.name == "vectorized":
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"one_step": one_step})})
    eng = build_engine(cfg.engine, device)
    fed = Federation(cfg, fed_data, model, eng, transport=Streamed if streaming else InProcess)
    state = fed.init_state()
    state.params = _fedmtl_init(model, w)
    per_round = []
    for _ in range(w.rounds):
        tr = time.perf_counter()
        state, _ = fed.round(state)
        synchronize(device)
        per_round.append(time.perf_counter() - tr)
    seconds = time.perf_counter() - t0
    p = state.params
    layers = [
        p[n]
        for n, _ in model.named_parameters()
        if not n.startswith("heads.") or n.startswith("heads.digit.")
    ]
    return {
        "seconds": seconds,
        "round_seconds": per_round,
        "accuracy": _accuracy(layers, data["x_test"], data["y_test"]),
    }


def worker_flower(w: Workload, data_path: str, threads: int) -> dict:
    """Flower's simulation engine (Ray): 2 client actors of 1 CPU and 1 thread each, Flower's FedAvg."""
    import logging

    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    data = _load(data_path)
    result_path = data_path + ".flower.pt"
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        global _CACHE
        try:
            cache = _CACHE  # type: ignore[name-defined]
        except NameError:
            d = _load(data_path)
            cache = _CACHE = (
                torch.from_numpy(d["x"]),
                torch.from_numpy(d["y"]),
                iid_split(len(d["x"]), w.num_clients),
            )
        x, y, parts = cache
        pid = int(context.node_config["partition-id"])
        rows = torch.from_numpy(parts[pid])
        model = mlp(w.hidden, x.shape[1])
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=w.lr)
        xc, yc = x[rows], y[rows]
        gen = torch.Generator().manual_seed(int(msg.content["config"]["server-round"]) * 1_000_003 + pid)
        for _ in range(w.epochs):
            for idx in torch.randperm(len(rows), generator=gen).split(w.batch_size):
                loss = F.cross_entropy(model(xc[idx]), yc[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(rows)})}
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        keys = [f"{i}.{k}" for i in range(0, 2 * (len(w.hidden) + 1), 2) for k in ("weight", "bias")]
        init = dict(zip(keys, init_params(w.hidden)))
        n = w.num_clients
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(init), num_rounds=w.rounds)
        torch.save(result.arrays.to_torch_state_dict(), result_path)

    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=w.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": threads, "include_dashboard": False},
        },
    )
    seconds = time.perf_counter() - t0
    sd = torch.load(result_path)
    os.unlink(result_path)
    layers = [sd[k] for k in sd]
    return {"seconds": seconds, "accuracy": _accuracy(layers, data["x_test"], data["y_test"])}


def worker_sweep(
    clients: int, data: dict, threads: int, engine: str, tasks: tuple[str, ...], rounds: int
) -> dict:
    """Seconds per round and accuracy of the streaming fedmtl round at ``clients`` clients per round."""
    import torch

    from fedmtl.engine import build_engine
    from fedmtl.engine.reducing import Streamed
    from fedmtl.fl.federation import Federation

    torch.set_num_threads(threads)
    w = Workload("sweep", num_clients=10_000, epochs=1, lr=0.05, rounds=rounds)
    cfg, fed_data, model = _fedmtl_setup(w, data, engine, tasks=tasks, clients=clients)
    t0 = time.perf_counter()
    fed = Federation(cfg, fed_data, model, build_engine(cfg.engine), transport=Streamed)
    state = fed.init_state()
    per_round = []
    for _ in range(rounds):
        tr = time.perf_counter()
        state, _ = fed.round(state)
        per_round.append(time.perf_counter() - tr)
    return {"seconds": time.perf_counter() - t0, "round_seconds": per_round}


def worker_main(ns: argparse.Namespace) -> None:
    data = _load(ns.data)
    if ns.worker == "sweep":
        res = worker_sweep(ns.clients, data, ns.threads, ns.engine, tuple(ns.tasks.split(",")), ns.rounds)
    else:
        w = dataclasses.replace(WORKLOADS[ns.workload], rounds=ns.rounds)
        if ns.worker == "bare-pytorch":
            res = worker_bare(w, data, ns.threads, ns.device)
        elif ns.worker == "flower":
            res = worker_flower(w, ns.data, ns.threads)
        else:
            engine = ns.worker.split("-")[1]
            streaming = ns.worker in ("fedmtl-vectorized", "fedmtl-vectorized-general")
            res = worker_fedmtl(w, data, ns.threads, engine, streaming, one_step=ns.worker != "fedmtl-vectorized-general", device=ns.device)
    if ns.device.startswith("cuda"):
        import torch

        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(ns.result).write_text(json.dumps(res))


# ----------------------------------------------------------------------------------------- driver
def _ratio_table(name: str, rows: dict[str, dict]) -> str:
    systems = [s for s in rows if "seconds" in rows[s]]
    head = (
        "| system | train s | last round s | peak MiB (all procs) | accuracy | "
        + " | ".join(f"× vs {s}" for s in systems)
        + " |"
    )
    sep = "|" + "---|" * (5 + len(systems))
    lines = [f"**{name}**", "", head, sep]
    for s, r in rows.items():
        if "seconds" not in r:
            lines.append(
                f"| {s} | {r.get('error', 'failed')} | | {r.get('peak_rss_mb', '')} | | " + " | " * len(systems)
            )
            continue
        ratios = " | ".join(f"{rows[o]['seconds'] / r['seconds']:.2f}" for o in systems)
        last = f"{r['round_seconds'][-1]:.2f}" if r.get("round_seconds") else ""  # steady state: after the one-time warm-ups
        lines.append(
            f"| {s} | {r['seconds']:.2f} | {last} | {r['peak_rss_mb']:.0f} | {100 * r['accuracy']:.1f} % | {ratios} |"
        )
    accs = [r["accuracy"] for r in rows.values() if "accuracy" in r]
    if accs:
        spread = 100 * (max(accs) - min(accs))
        lines.append("")
        lines.append(
            f"accuracy spread {spread:.2f} points: "
            + ("comparison valid (≤ 1 point)" if spread <= 1.0 else "COMPARISON VOID (> 1 point)")
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="W1 with 4 rounds and W2 with 1,000 clients only; no sweep"
    )
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument("--skip-sequential", action="store_true")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--workloads", default="W1,W2,W2-10k")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--device", default="cpu", help="where fedmtl-vectorized and bare-pytorch run: cpu, cuda or cuda:N (the others: CPU only)")
    p.add_argument("--out", default=str(HERE / "results" / "engines.json"))
    p.add_argument("--plot", default=str(HERE.parent / "docs" / "engines_scaling.png"))
    # worker mode (internal)
    p.add_argument("--worker", default=None)
    p.add_argument("--workload", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--result", default=None)
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--clients", type=int, default=0)
    p.add_argument("--engine", default="vectorized")
    p.add_argument("--tasks", default="digit")
    p.add_argument("--rounds", type=int, default=2)
    ns = p.parse_args()
    if ns.worker:
        worker_main(ns)
        return

    from fedmtl.engine.device import resolve_device

    resolve_device(ns.device)  # no such device: the error before any run
    tmp = Path(tempfile.mkdtemp(prefix="fedmtl-bench-"))
    data_small = tmp / "mnist1d_12k.npz"
    np.savez(data_small, **mnist1d(12_000))
    out: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "threads": ns.threads,
            "note": "shared machine: other processes may have been running",
            "device": ns.device,
        },
        "workloads": {},
    }
    names = ["W1", "W2"] if ns.quick else ns.workloads.split(",")
    if ns.quick:
        WORKLOADS["W1"] = Workload("W1", num_clients=100, epochs=5, lr=0.3, rounds=4)
    data_big = None
    tables = []
    for name in names:
        w = WORKLOADS[name]
        if w.num_clients > 1000 and data_big is None:
            data_big = tmp / "mnist1d_120k.npz"
            np.savez(data_big, **mnist1d(120_000))
        path = str(data_big if w.num_clients > 1000 else data_small)
        systems = [
            s
            for s in SYSTEMS
            if not (ns.skip_flower and s == "flower")
            and not (ns.skip_sequential and s == "fedmtl-sequential")
            and not (s == "fedmtl-vectorized-general" and not _one_step(w, len(_load(path)["x"])))
        ]
        if w.num_clients > 1000 or ns.device != "cpu":
            systems = ["fedmtl-vectorized"] + [s for s in systems if s in ("bare-pytorch",)]
        rows = {}
        for s in systems:
            args = [
                s,
                "--workload",
                name,
                "--data",
                path,
                "--threads",
                str(ns.threads),
                "--rounds",
                str(w.rounds),
                "--device",
                ns.device,
            ]
            print(f"[{name}] {s} ...", flush=True)
            rows[s] = run_worker(args, ns.timeout)
            print(f"    {rows[s]}", flush=True)
        out["workloads"][name] = {"workload": w.__dict__ | {"hidden": list(w.hidden)}, "results": rows}
        tables.append(
            _ratio_table(
                f"{name}: {w.num_clients} clients, {w.epochs} epoch(s), lr {w.lr}, {w.rounds} rounds", rows
            )
        )
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(json.dumps(out, indent=2))

    if not ns.quick and not ns.skip_sweep:
        if data_big is None:
            data_big = tmp / "mnist1d_120k.npz"
            np.savez(data_big, **mnist1d(120_000))
        sweep = []
        for tasks in ("digit", "digit,parity"):
            for engine in ("vectorized", "sequential"):
                for n in (10, 100, 1000, 10_000):
                    if engine == "sequential" and n > 1000:
                        continue
                    print(f"[sweep] {engine} {tasks} {n} clients ...", flush=True)
                    r = run_worker(
                        [
                            "sweep",
                            "--data",
                            str(data_big),
                            "--threads",
                            str(ns.threads),
                            "--clients",
                            str(n),
                            "--engine",
                            engine,
                            "--tasks",
                            tasks,
                            "--rounds",
                            "2",
                        ],
                        ns.timeout,
                    )
                    r.update({"clients": n, "engine": engine, "tasks": tasks})
                    print(f"    {r}", flush=True)
                    sweep.append(r)
        out["sweep"] = sweep
        Path(ns.out).write_text(json.dumps(out, indent=2))
        tables.append(_sweep_table(sweep))
        _plot(sweep, ns.plot, ns.threads)
    print("\n\n".join(tables))


def _sweep_table(sweep: list[dict]) -> str:
    lines = [
        "**Scale sweep** (1 local epoch, 9-10 samples per client, streaming round)",
        "",
        "| engine | tasks | clients | s / round (1st, 2nd) | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for r in sweep:
        rs = r.get("round_seconds")
        cell = f"{rs[0]:.3f}, {rs[1]:.3f}" if rs else r.get("error", "failed")
        lines.append(f"| {r['engine']} | {r['tasks']} | {r['clients']} | {cell} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def _plot(sweep: list[dict], path: str, threads: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for engine in ("vectorized", "sequential"):
        for tasks, style in (("digit", "-o"), ("digit,parity", "--s")):
            pts = [
                r for r in sweep if r["engine"] == engine and r["tasks"] == tasks and r.get("round_seconds")
            ]
            if not pts:
                continue
            xs = [r["clients"] for r in pts]
            label = f"{engine}, {'single-task' if tasks == 'digit' else 'multi-task'}"
            a1.plot(xs, [r["round_seconds"][-1] for r in pts], style, label=label)
            a2.plot(xs, [r["peak_rss_mb"] for r in pts], style, label=label)
    xs = np.array([10, 10_000])
    for ax, ylabel in (
        (a1, "seconds per round (2nd round)"),
        (a2, "peak resident memory, MiB (all processes)"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients per round")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ref = [
        r for r in sweep if r["engine"] == "vectorized" and r["tasks"] == "digit" and r.get("round_seconds")
    ]
    if ref:
        y0 = ref[-1]["round_seconds"][-1] / ref[-1]["clients"]
        a1.plot(xs, y0 * xs, ":", color="grey", label="linear in clients")
    a1.legend(fontsize=8)
    fig.suptitle(
        f"fedmtl: cost of one round vs clients per round (MNIST-1D MLP 40-256-256-10, {threads} thread(s))"
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
