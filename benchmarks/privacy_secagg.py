"""Secure-aggregation overhead per round versus plain aggregation.

Runs the in-process Bonawitz et al. (2017) protocol (complete graph) for 10 and 100 clients and
SecAgg+ (k-regular graph, k ~ 3 log2 n) for 1000 clients, each with and without 10% of clients
dropping after sharing keys, on one parameter group of ``--params`` float32 values. Prints a
Markdown table and writes ``benchmarks/results/privacy_secagg.json``.

    PYTHONPATH=src python benchmarks/privacy_secagg.py [--params 10000] [--clients 10 100 1000]

Times are single-process wall-clock on this machine: "client s" is the mean compute time of one
client over all four rounds (what a device would spend), "server s" the unmasking work; bytes are
per client (upload / download), versus 4 bytes per float32 for plain aggregation.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fedmtl.config.privacy import SecureAggregationConfig
from fedmtl.privacy.secagg import sample_dropouts, secure_aggregate


def plain_round(vectors: dict[int, torch.Tensor]) -> float:
    best = float("inf")
    for _ in range(3):  # best of 3: the first call pays allocator warm-up
        t0 = time.perf_counter()
        torch.stack(list(vectors.values())).sum(0)
        best = min(best, time.perf_counter() - t0)
    return best


def run(n: int, params: int, dropout: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    vectors = {c: torch.randn(params, generator=g) * 0.1 for c in range(n)}
    graph = "complete" if n <= 100 else "k_regular"
    cfg = SecureAggregationConfig(threshold=0.5, bits=32, clip_range=1.0, graph=graph, rounding="stochastic")
    dropped = sample_dropouts(vectors, dropout, g)
    t0 = time.perf_counter()
    res = secure_aggregate({c: {"shared": v} for c, v in vectors.items()}, cfg, dropped=dropped, generator=g)
    total = time.perf_counter() - t0
    survivors = [c for c in vectors if c not in dropped]
    true = torch.stack([vectors[c].double() for c in survivors]).sum(0)
    err = float((res.sums["shared"] - true).abs().max())
    plain_s = plain_round(vectors)
    return {
        "clients": n,
        "graph": graph,
        "neighbours": res.stats.neighbours,
        "dropped": len(dropped),
        "params": params,
        "plain_bytes_per_client": 4 * params,
        "upload_bytes_per_client": res.stats.upload_bytes,
        "download_bytes_per_client": res.stats.download_bytes,
        "upload_expansion": res.stats.upload_bytes / (4 * params),
        "client_seconds": res.stats.client_seconds,
        "server_seconds": res.stats.server_seconds,
        "round_seconds_simulated": total,
        "plain_server_seconds": plain_s,
        "max_abs_error_vs_float_sum": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--out", default="benchmarks/results/privacy_secagg.json")
    args = ap.parse_args()
    rows = [run(n, args.params, d) for n in args.clients for d in args.dropouts]
    print(
        "| clients | graph (k) | dropped | plain up B/client | secagg up B/client | down B/client | up × | "
        "client s | server s | plain server s | round s (sim) | max err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['graph']} ({r['neighbours']:.0f}) | {r['dropped']} | {r['plain_bytes_per_client']:,} | "
            f"{r['upload_bytes_per_client']:,.0f} | {r['download_bytes_per_client']:,.0f} | {r['upload_expansion']:.2f} | "
            f"{r['client_seconds']:.4f} | {r['server_seconds']:.3f} | {r['plain_server_seconds']:.4f} | "
            f"{r['round_seconds_simulated']:.2f} | {r['max_abs_error_vs_float_sum']:.1e} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
