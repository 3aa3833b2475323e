"""A standardised regression target keeps its scale on the task: metrics come back in the target's own units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error

from fedmtl.config import config_from_dict
from fedmtl.data import build_federated_data, from_arrays


def _federation(normalize: str):
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 3)).astype(np.float32)
    cost = 40.0 * x[:, 0] + rng.normal(0, 5.0, n) + 250.0  # dollars
    site = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)]
    src = from_arrays(x, {"cost": cost}, {"cost": "regression"}, client_ids=site)
    raw = {"data": {"source": {"name": "arrays"}, "partition": {"name": "natural"}, "preprocessing": {"normalize": normalize}}}
    return build_federated_data(config_from_dict(raw).data, seed=0, source=src), cost


def test_task_carries_the_federated_target_statistics_and_rmse_is_in_dollars() -> None:
    fed, cost = _federation("federated")
    task = fed.task("cost")
    train = torch.cat([c.train.y["cost"] for c in fed.clients]).double()
    original = task.to_original_units(train)  # the clients' training targets, back in dollars
    assert float(original.mean()) == pytest.approx(task.target_offset, abs=1e-3)
    assert float(original.std(unbiased=False)) == pytest.approx(task.target_scale, rel=1e-4)
    assert 200 < task.target_offset < 300 and 30 < task.target_scale < 50
    client = fed.clients[0]
    y = client.test.y["cost"]
    pred = (y + 0.1 * torch.arange(len(y))).reshape(-1, 1)  # a model off by 0.1 k standard units on row k
    m = task.metrics(pred, y)
    y_d, p_d = task.to_original_units(y).double().numpy(), task.to_original_units(pred[:, 0]).double().numpy()
    assert m["rmse"] == pytest.approx(mean_squared_error(y_d, p_d) ** 0.5, rel=1e-5)
    assert m["mae"] == pytest.approx(mean_absolute_error(y_d, p_d), rel=1e-5)
    assert np.abs(y_d[:, None] - cost[None, :]).min(axis=1).max() < 1e-2  # each test target is a raw cost again


def test_unnormalised_targets_keep_unit_scale() -> None:
    fed, _ = _federation("none")
    assert (fed.task("cost").target_offset, fed.task("cost").target_scale) == (0.0, 1.0)
