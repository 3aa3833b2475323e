"""Uplink codec chains on realistic client updates: bytes, compression, error, encode/decode time.

The updates are the deltas of an MLP 40-256-256-10 (78,858 parameters) after local SGD on MNIST-1D
shards, i.e. what a FedAvg client would send. For every chain in ``CHAINS`` we measure, over clients:

* ``bytes``: ``len()`` of the real serialised payload (frame + safetensors + codec parts);
* ``ratio``: float32 size (4 bytes x parameters) / bytes;
* ``rel_err``: ``||decode(encode(Δ)) - Δ|| / ||Δ||`` for one update with fresh codec state;
* ``cum_rel_err``: the same on the sum over ``ROUNDS`` consecutive updates of one client, with the
  codec state (error-feedback residual) carried between them, which is what error feedback is for;
* ``enc_ms`` / ``dec_ms``: median wall time.

Run: ``PYTHONPATH=src python benchmarks/comm_codecs.py [--docs docs/communication.md]``. To measure a
new chain, add it to ``CHAINS``. Full federated accuracy per codec needs the round loop and is left
to the integration benchmark; :func:`measure_chain` is reusable there.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from fedmtl.comm import build_link
from fedmtl.config.comm import CommConfig

CHAINS: dict[str, list[dict]] = {
    "identity (fp32)": [{"name": "identity"}],
    "fp16": [{"name": "fp16"}],
    "bf16": [{"name": "bf16"}],
    "int8": [{"name": "int8"}],
    "int8 per-channel": [{"name": "int8", "per_channel": True}],
    "qsgd s=16": [{"name": "qsgd", "levels": 16}],
    "qsgd s=4 + zstd": [{"name": "qsgd", "levels": 4}, {"name": "zstd", "level": 3}],
    "sign (EF)": [{"name": "sign"}],
    "topk 10% (EF)": [{"name": "topk", "fraction": 0.1}],
    "topk 1% (EF)": [{"name": "topk", "fraction": 0.01}],
    "topk 1% + int8 + zstd (EF)": [
        {"name": "topk", "fraction": 0.01},
        {"name": "int8"},
        {"name": "zstd", "level": 3},
    ],
    "randk 1% (EF)": [{"name": "randk", "fraction": 0.01}],
    "randk 10% + fp16 (EF)": [{"name": "randk", "fraction": 0.1}, {"name": "fp16"}],
    "zstd (lossless)": [{"name": "zstd", "level": 3}],
    "lz4 (lossless)": [{"name": "lz4"}],
    "int8 + zstd": [{"name": "int8"}, {"name": "zstd", "level": 3}],
}

CLIENTS = 4
ROUNDS = 5
STEPS_PER_ROUND = 10
REPS = 3


def make_updates(seed: int = 0) -> list[list[dict[str, torch.Tensor]]]:
    """``updates[client][round]``: deltas of consecutive local-SGD segments on one MNIST-1D shard each."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 4000
    data = make_dataset(args)
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    torch.manual_seed(seed)
    init = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    shards = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).chunk(CLIENTS)
    out = []
    for c, shard in enumerate(shards):
        model = copy.deepcopy(init)  # every client starts from the same global model
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(seed * 100 + c)
        rounds = []
        for _ in range(ROUNDS):
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for _ in range(STEPS_PER_ROUND):
                idx = shard[torch.randint(len(shard), (32,), generator=g)]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            rounds.append({k: v.detach() - before[k] for k, v in model.state_dict().items()})
        out.append(rounds)
    return out


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def measure_chain(chain: list[dict], updates: list[list[dict[str, torch.Tensor]]], seed: int = 0) -> dict:
    """Bytes, ratio, errors and timings of one codec chain (see the module docstring)."""
    link = build_link(CommConfig(uplink=chain).uplink)
    numel = sum(v.numel() for v in updates[0][0].values())
    shapes = {k: v.shape for k, v in updates[0][0].items()}
    sizes, errs, cum_errs, enc, dec = [], [], [], [], []
    for c, rounds in enumerate(updates):
        g = torch.Generator().manual_seed(seed * 1000 + c)
        state: dict = {}
        sent_sum = torch.zeros(numel)
        for r, delta in enumerate(rounds):
            times = []
            for _ in range(REPS):  # timing repetitions use the same input state
                t0 = time.perf_counter()
                data, new_state = link.encode(delta, state, g)
                times.append(time.perf_counter() - t0)
            enc.append(statistics.median(times))
            times = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                out = link.decode(data, expected=shapes)
                times.append(time.perf_counter() - t0)
            dec.append(statistics.median(times))
            sizes.append(len(data))
            true, got = _flat(delta), _flat(out)
            if r == 0:
                errs.append(float((got - true).norm() / true.norm()))
            sent_sum += got
            state = new_state
        total = torch.stack([_flat(d) for d in rounds]).sum(0)
        cum_errs.append(float((sent_sum - total).norm() / total.norm()))
    mean_bytes = statistics.mean(sizes)
    return {
        "chain": chain,
        "params": numel,
        "bytes": round(mean_bytes),
        "ratio": 4 * numel / mean_bytes,
        "rel_err": statistics.mean(errs),
        "cum_rel_err": statistics.mean(cum_errs),
        "enc_ms": 1000 * statistics.median(enc),
        "dec_ms": 1000 * statistics.median(dec),
        "stateful": link.stateful,
    }


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "| chain | uplink bytes | ratio vs fp32 | rel. error (1 update) | rel. error (sum of 5, EF state kept) | encode ms | decode ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['bytes']:,} | {r['ratio']:.1f}x | {r['rel_err']:.4f} | {r['cum_rel_err']:.4f} "
            f"| {r['enc_ms']:.2f} | {r['dec_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/comm_codecs.json")
    parser.add_argument(
        "--docs", default=None, help="Markdown file whose table (between markers) is replaced."
    )
    parser.add_argument("--only", nargs="*", default=None, help="Chain names to run (default: all).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    updates = make_updates()
    results = {n: measure_chain(c, updates) for n, c in CHAINS.items() if not args.only or n in args.only}
    table = markdown(results)
    print(table)
    meta = {
        "model": "MLP 40-256-256-10",
        "dataset": "MNIST-1D (num_samples=4000)",
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "sgd_steps_per_round": STEPS_PER_ROUND,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": 1,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    if args.docs:
        path = Path(args.docs)
        text = path.read_text()
        start, end = "<!-- comm_codecs:start -->", "<!-- comm_codecs:end -->"
        i, j = text.index(start) + len(start), text.index(end)
        path.write_text(text[:i] + "\n" + table + "\n" + text[j:])


if __name__ == "__main__":
    main()
