"""Small synthetic federations for the personalisation tests (seconds, no downloads)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedmtl.config import config_from_dict
from fedmtl.data import build_federated_data, from_arrays
from fedmtl.engine import SequentialEngine
from fedmtl.fl.federation import Federation
from fedmtl.mtl import build_model


def synthetic(n: int = 600, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    a = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    b = (x[:, 2] + x[:, 3] > 0).astype(int)
    return from_arrays(x, {"a": a, "b": b}, {"a": "multiclass", "b": "binary"}, num_classes={"a": 3})


def config(algorithm: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": {
            "num_clients": 6,
            "source": {"name": "table", "path": "in-memory", "tasks": [{"name": "a", "kind": "multiclass"}, {"name": "b", "kind": "binary"}]},
            "partition": {"name": "iid"},
            "task_assignment": {"name": "explicit", "clients": {0: ["a"], 1: ["a"], 2: ["b"], 3: ["b"], 4: ["a", "b"], 5: ["a", "b"]}},
        },
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16]}},
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
        "server": {"rounds": 2, "clients_per_round": 6},
        "algorithm": algorithm or {"name": "fedavg"},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def federation(cfg: dict[str, Any], source=None) -> Federation:  # type: ignore[no-untyped-def]
    c = config_from_dict(cfg)
    data = build_federated_data(c.data, c.seed, source if source is not None else synthetic())
    model = build_model(c.model, data.input_shape, data.tasks)
    return Federation(c, data, model, SequentialEngine())


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
