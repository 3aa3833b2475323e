"""The small federation the systems tests share (a unique module name: tests/ has several conftest.py)."""

from __future__ import annotations

from typing import Any


def small_config(tmp_path: Any, systems: dict[str, Any] | None, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {
            "source": {"name": "mnist1d", "num_samples": 600, "tasks": ["digit", "parity"]},
            "num_clients": 8,
            "partition": {"name": "dirichlet", "alpha": 1.0},
        },
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16]}},
        "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
        "server": {"rounds": 3, "clients_per_round": 4},
        "evaluation": {"personalized": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "sys", "plots": False},
    }
    if systems is not None:
        cfg["systems"] = systems
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
