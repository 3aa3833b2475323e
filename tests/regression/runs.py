"""The seeded runs tests/regression/test_pinned_runs.py pins: small, a few seconds each.

``python tests/regression/runs.py`` prints their fingerprints (run it on the code whose behaviour is
the reference, paste the output into ``PINNED``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


def base(out_dir: str) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {
            "source": {"name": "mnist1d", "num_samples": 600, "tasks": ["digit", "parity"]},
            "num_clients": 6,
            "partition": {"name": "dirichlet", "alpha": 1.0},
        },
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [32]}},
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
        "server": {"rounds": 2, "clients_per_round": 4},
        "evaluation": {"personalized": True},
        "output": {"dir": out_dir, "plots": False},
    }


#: name -> the changes a run makes to :func:`base`
RUNS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "scaffold": {"algorithm": {"name": "scaffold"}},
    "ditto": {"algorithm": {"name": "ditto", "lam": 0.1}},
    "fedem": {"algorithm": {"name": "fedem", "components": 2}},
    "pcgrad": {"mtl": {"balancer": {"name": "pcgrad"}}},
    "secagg": {"privacy": {"secure_aggregation": {"dropout_rate": 0.0}}},
    "vectorized_dwa": {"mtl": {"balancer": {"name": "dwa"}}, "engine": {"name": "vectorized"}},
    "topk_fedadam": {
        "comm": {"uplink": [{"name": "topk", "fraction": 0.1}, {"name": "int8"}]},
        "server": {"rounds": 2, "clients_per_round": 4, "optimizer": {"name": "fedadam", "lr": 0.01}},
    },
}


def checksum(params: dict[str, torch.Tensor]) -> str:
    """sha256 over the final parameters (names sorted, float32 bytes): any changed bit shows."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def rounded(tree: Any) -> Any:
    """Metrics rounded to 6 decimals (they are printed from float64 sums, so equal runs agree exactly)."""
    if isinstance(tree, dict):
        return {k: rounded(v) for k, v in sorted(tree.items())}
    if isinstance(tree, list):
        return [rounded(v) for v in tree]
    if isinstance(tree, float):
        return round(tree, 6)
    return tree


def _mean_client_accuracy(run_dir: Any) -> float:
    """The figure pinned before per-task reporting (summary.json's old ``final_personalized.mean``): per client the
    mean over its tasks of accuracy (every pinned run is classification), then the mean over clients; read from
    ``clients.json``, which keeps every client's metrics per task."""
    rows = json.loads((Path(run_dir) / "clients.json").read_text())
    scores = [sum(m["accuracy"] for m in r["tasks"].values()) / len(r["tasks"]) for r in rows if r["tasks"]]
    return sum(scores) / len(scores)


def fingerprint(name: str, out_dir: str) -> dict[str, Any]:
    """Run ``name`` and return its final global metrics, personalised mean and parameter checksum."""
    import fedmtl

    cfg = {**base(out_dir), **RUNS[name]}
    cfg["output"] = {**cfg["output"], "name": name}
    res = fedmtl.Experiment(cfg).run(progress=False)
    return {
        "global": rounded(res.summary["final_global"]),
        "personalized_mean": rounded(_mean_client_accuracy(res.run_dir)),
        "params": checksum(res.params),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(RUNS)
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps({n: fingerprint(n, d) for n in names}, indent=1))
