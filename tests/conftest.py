"""Shared fixtures: small, fast configurations."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path):
    """A small federated multi-task run on MNIST-1D that trains in seconds."""
    return {
        "seed": 0,
        "data": {
            "source": {"name": "mnist1d", "num_samples": 1200, "tasks": ["digit", "parity"]},
            "num_clients": 10,
            "partition": {"name": "dirichlet", "alpha": 1.0},
        },
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [64]}},
        "client": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
        "server": {"rounds": 3, "clients_per_round": 5},
        "output": {"dir": str(tmp_path / "runs"), "name": "tiny", "plots": False},
    }


@pytest.fixture
def clean_registry():
    """The component registry as it is, restored after the test (registrations and plugin loading)."""
    from fedmtl import registry

    for kind in registry.KINDS:
        registry.names(kind)  # the built-ins, loaded before the snapshot
    saved = {kind: dict(members) for kind, members in registry._registry.items()}
    plugins_loaded = registry._plugins_loaded
    yield registry
    for kind, members in saved.items():
        registry._registry[kind].clear()
        registry._registry[kind].update(members)
    registry._plugins_loaded = plugins_loaded
    registry._version += 1
