"""Shared helpers: build a small federation and run rounds with a given engine."""

from __future__ import annotations

import torch

from fedmtl.config import load_config
from fedmtl.data.build import build_federated_data
from fedmtl.fl.federation import Federation
from fedmtl.mtl import build_model

BASE = [
    "data.source.name=mnist1d",
    "data.source.num_samples=300",
    "data.num_clients=8",
    "data.partition.name=quantity_skew",
    "data.partition.alpha=1.0",
    "data.preprocessing.normalize=federated",
    "model.name=hard_sharing",
    "model.trunk.name=mlp",
    "model.trunk.hidden=[16,12]",
    "client.optimizer.name=sgd",
    "client.optimizer.lr=0.1",
    "client.epochs=2",
    "client.batch_size=8",
    "server.clients_per_round=6",
]


def setup(overrides: list[str] | None = None, cache: dict = {}):  # noqa: B006 - a deliberate per-process cache
    cfg = load_config(None, BASE + list(overrides or []))
    key = cfg.data.model_dump_json() + str(cfg.seed)
    if key not in cache:
        cache[key] = build_federated_data(cfg.data, cfg.seed)
    data = cache[key]
    return cfg, data


def run(cfg, data, engine, rounds: int = 3, federation_cls=Federation):
    model = build_model(cfg.model, data.input_shape, data.tasks)
    fed = federation_cls(cfg, data, model, engine)
    state = fed.init_state()
    reports = []
    for _ in range(rounds):
        state, rep = fed.round(state)
        reports.append(rep)
    return state, reports


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
