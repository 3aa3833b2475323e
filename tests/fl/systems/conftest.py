"""Small federations with a simulated system, built the way Experiment builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fedmtl.config import config_from_dict
from fedmtl.engine import make_federation
from fedmtl.experiment import Experiment
from fedmtl.fl.systems import Driver, build_systems


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


@pytest.fixture
def build(tmp_path: Any) -> Callable[..., tuple[Driver, Any]]:
    """``build(systems, **overrides) -> (driver, federation)``."""

    def make(systems: dict[str, Any], **over: Any) -> tuple[Driver, Any]:
        cfg = config_from_dict(small_config(tmp_path, systems, **over))
        exp = Experiment(cfg)
        fed = make_federation(cfg, exp.data, exp.build_model())
        assert cfg.systems is not None
        return build_systems(cfg.systems, fed), fed

    return make
