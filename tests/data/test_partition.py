"""Partitioners: every row exactly once, sizes as specified, skew where asked for, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.data import DataError, partition


def covers_exactly_once(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def labels(n=1000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def test_iid_sizes_differ_by_at_most_one():
    parts = partition.iid(103, 10, np.random.default_rng(0))
    assert covers_exactly_once(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_dirichlet_covers_and_is_skewed():
    y = labels()
    skewed = partition.dirichlet(y, 20, 0.1, np.random.default_rng(0), min_size=2)
    flat = partition.dirichlet(y, 20, 1000.0, np.random.default_rng(0), min_size=2)
    assert covers_exactly_once(skewed, len(y)) and covers_exactly_once(flat, len(y))
    assert min(len(p) for p in skewed) >= 2

    def mean_top_class_share(parts):
        return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])

    # alpha = 0.1 concentrates each client on few classes; alpha = 1000 is near IID (share ~ 0.1-0.2)
    assert mean_top_class_share(skewed) > 0.5
    assert mean_top_class_share(flat) < 0.25


def test_dirichlet_impossible_min_size_is_a_clear_error():
    with pytest.raises(DataError, match="at least 50 row"):
        partition.dirichlet(labels(100), 10, 0.5, np.random.default_rng(0), min_size=50)


def test_shards_give_k_classes_per_client():
    y = np.repeat(np.arange(10), 100)  # 1000 rows, 100 per class
    parts = partition.shards(y, 50, 2, np.random.default_rng(0))
    assert covers_exactly_once(parts, 1000)
    assert all(len(p) == 20 for p in parts)
    # shards of 10 rows never straddle two classes here, so each client sees at most 2 classes
    assert all(len(np.unique(y[p])) <= 2 for p in parts)


def test_quantity_skew_sizes_vary_labels_do_not():
    parts = partition.quantity_skew(1000, 10, 0.5, np.random.default_rng(1), min_size=5)
    assert covers_exactly_once(parts, 1000)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 5 and max(sizes) > 2 * min(sizes)


def test_natural_groups_by_id():
    ids = np.array([3, 1, 3, 2, 1, 3])
    parts = partition.natural(ids)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]


def test_deterministic_under_seed():
    y = labels()
    a = partition.dirichlet(y, 10, 0.5, np.random.default_rng(7))
    b = partition.dirichlet(y, 10, 0.5, np.random.default_rng(7))
    assert all(np.array_equal(x, z) for x, z in zip(a, b))


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(DataError, match="lower data.num_clients"):
        partition.iid(5, 10, np.random.default_rng(0))
