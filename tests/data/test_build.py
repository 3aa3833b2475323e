"""Building a federation: hold-out, partition, task assignment, local splits, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config import config_from_dict
from fedmtl.data import DataError, Moments, build_federated_data, from_arrays
from fedmtl.data.assignment import random_subset
from fedmtl.data.preprocessing import clean


def small(**data):
    base = {"source": {"name": "digits"}, "num_clients": 12, "partition": {"name": "iid"}}
    base.update(data)
    return config_from_dict({"data": base}).data


def test_every_training_row_goes_to_exactly_one_client_split():
    fed = build_federated_data(small(test_fraction=0.25), seed=0)
    total = sum(len(c.train) + len(c.test) for c in fed.clients) + len(fed.holdout)
    assert total == 1797
    assert all(len(c.test) > 0 and len(c.train) > 0 for c in fed.clients)
    assert fed.input_shape == (64,)
    assert fed.clients[0].train.y["digit"].dtype == torch.long
    assert fed.clients[0].train.y["parity"].dtype == torch.float32


def test_deterministic_and_seed_sensitive():
    a = build_federated_data(small(), seed=3)
    b = build_federated_data(small(), seed=3)
    c = build_federated_data(small(), seed=4)
    assert torch.equal(a.clients[5].train.x, b.clients[5].train.x)
    assert not torch.equal(a.clients[5].train.x, c.clients[5].train.x)


def test_random_task_subset_covers_every_task():
    fed = build_federated_data(small(task_assignment={"name": "random_subset", "tasks_per_client": 1}), seed=0)
    held = [c.tasks for c in fed.clients]
    assert all(len(t) == 1 for t in held)
    assert {t for ts in held for t in ts} == {"digit", "parity"}
    assert all(set(c.train.y) == set(c.tasks) for c in fed.clients)


def test_random_subset_rejects_impossible_k():
    with pytest.raises(DataError, match="must lie in 1..2"):
        random_subset(5, ["a", "b"], 3, np.random.default_rng(0))


def test_explicit_assignment_validates_names():
    with pytest.raises(DataError, match="non-empty subset"):
        build_federated_data(small(task_assignment={"name": "explicit", "clients": {0: ["colour"]}}), seed=0)


def test_federated_normalisation_equals_pooled_statistics():
    fed = build_federated_data(small(preprocessing={"normalize": "federated"}), seed=0)
    pooled = torch.cat([c.train.x for c in fed.clients])
    used = pooled.std(0, unbiased=False) > 1e-3  # constant pixels stay 0
    assert torch.allclose(pooled.mean(0), torch.zeros(64), atol=1e-4)
    assert torch.allclose(pooled.std(0, unbiased=False)[used], torch.ones(int(used.sum())), atol=1e-3)


def test_client_normalisation_uses_each_clients_own_statistics():
    fed = build_federated_data(small(preprocessing={"normalize": "client"}), seed=0)
    for c in fed.clients[:3]:
        assert torch.allclose(c.train.x.mean(0), torch.zeros(64), atol=1e-4)


def test_moments_add_up_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 4)), rng.normal(3, 2, size=(50, 4))
    mean, std = (Moments.of(a) + Moments.of(b)).mean_std()
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, both.std(0), rtol=1e-5)


def test_cleaning_counts_what_it_drops_and_imputes():
    from fedmtl.tasks import Task

    x = np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, np.inf], [4.0, 4.0]], dtype=np.float32)
    y = {"c": np.array([0, 1, 1, np.nan], dtype=np.float32)}
    tasks = [Task("c", "multiclass", 2)]
    xd, yd, counts = clean(x, y, tasks, "drop")
    assert counts.as_dict() == {
        "rows": 4, "dropped_no_label": 1, "dropped_invalid_label": 0, "dropped_feature": 2, "imputed_rows": 0, "imputed_values": 0
    }
    assert xd.tolist() == [[1.0, 2.0]]
    xi, _, counts = clean(x, y, tasks, "impute_mean")
    assert (counts.imputed_rows, counts.imputed_values, counts.dropped) == (2, 2, 1)
    assert xi[1, 0] == pytest.approx(2.0)  # mean of the finite 1 and 3 in column 0 (row 3 dropped for its label)
    assert xi[2, 1] == pytest.approx(1.5)


def test_user_arrays_with_natural_clients_and_string_labels():
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, 5)).astype(np.float32)
    colour = np.array(["red", "green", "blue"])[rng.integers(0, 3, n)]
    size = x[:, 0] * 2 + rng.normal(0, 0.1, n)
    site = np.array(["north", "south", "east", "west"])[rng.integers(0, 4, n)]
    src = from_arrays(x, {"colour": colour, "size": size}, {"colour": "multiclass", "size": "regression"}, client_ids=site)
    cfg = config_from_dict({"data": {"source": {"name": "arrays"}, "partition": {"name": "natural"}}}).data
    fed = build_federated_data(cfg, seed=0, source=src)
    assert fed.num_clients == 4
    assert fed.task("colour").num_classes == 3
    assert sum(len(c.train) + len(c.test) for c in fed.clients) + len(fed.holdout) == n


def test_arrays_source_without_arrays_says_how_to_pass_them():
    cfg = config_from_dict({"data": {"source": {"name": "arrays"}, "partition": {"name": "iid"}}}).data
    with pytest.raises(DataError, match="source=fedmtl.from_arrays"):
        build_federated_data(cfg, seed=0)


def test_no_local_test_split():
    fed = build_federated_data(small(test_fraction=0.0), seed=0)
    assert all(len(c.test) == 0 and len(c.train) > 0 for c in fed.clients)
