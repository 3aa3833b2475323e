"""Every aggregator: permutation invariant, the mean when all updates are equal; robust ones against outliers."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from fedmtl import registry
from fedmtl.config.training import Aggregator as AggregatorConfig
from fedmtl.fl.aggregation import aggregate_by_group, build_aggregator, weighted_mean
from fedmtl.fl.robust import CoordinateMedian, Krum, NormBoundedMean, TrimmedMean
from fedmtl.fl.update import ClientUpdate

#: options the property tests give a registered aggregator instead of its defaults (none: the defaults)
OPTIONS = {"trimmed_mean": {"beta": 0.2}, "norm_bounded": {"max_norm": 100.0}}
#: every registered aggregator (a new one is picked up here), plus Multi-Krum
AGGREGATORS = {
    c.name: build_aggregator(c.config_model(**OPTIONS.get(c.name, {}))) for c in registry.components("aggregator")
} | {"multi_krum": Krum(f=1, m=3)}


def _stack(n=7, p=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g), torch.rand(n, generator=g) + 0.5


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_permutation_invariant(name):
    agg = AGGREGATORS[name]
    u, w = _stack()
    perm = torch.randperm(u.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(agg(u, w), agg(u[perm], w[perm]), atol=1e-6)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_equal_updates_give_that_update(name):
    row = torch.linspace(-1, 1, 11)
    u, w = row.expand(6, 11).clone(), torch.arange(1.0, 7.0)
    assert torch.allclose(AGGREGATORS[name](u, w), row, atol=1e-6)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_zero_weight_rows_are_ignored(name):
    u, w = _stack(n=8)
    w[3] = 0
    u_bad = u.clone()
    u_bad[3] = 1e6
    assert torch.allclose(AGGREGATORS[name](u_bad, w), AGGREGATORS[name](u, w), atol=1e-5)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_input_validation(name):
    with pytest.raises(ValueError, match="weights must be"):
        AGGREGATORS[name](torch.ones(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="\\[clients, params\\]"):
        AGGREGATORS[name](torch.ones(3), torch.ones(3))


def _with_outliers(n_honest=8, n_bad=2, p=20):
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.1 * torch.randn(n_honest, p, generator=g)
    bad = torch.full((n_bad, p), -100.0)
    return torch.cat([honest, bad]), torch.ones(n_honest + n_bad), honest


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multi_krum"])
def test_robust_against_known_outliers(name):
    agg = {
        "median": CoordinateMedian(),
        "trimmed_mean": TrimmedMean(0.2),
        "krum": Krum(f=2),
        "multi_krum": Krum(f=2, m=4),
    }[name]
    u, w, honest = _with_outliers()
    out = agg(u, w)
    assert bool(((out - 1.0).abs() < 0.35).all()), out
    assert float(weighted_mean(u, w).mean()) < -15  # the plain mean is ruined


def test_krum_selects_an_honest_update():
    u, w, honest = _with_outliers()
    out = Krum(f=2)(u, w)
    assert any(torch.equal(out, h) for h in honest)


def test_krum_falls_back_to_median_on_small_cohorts():
    u = torch.tensor([[0.0], [1.0], [100.0]])
    assert torch.equal(Krum(f=1)(u, torch.ones(3)), torch.tensor([1.0]))


def test_norm_bound_clips_each_update():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = NormBoundedMean(1.0)(u, torch.tensor([1.0, 1.0]))
    assert torch.allclose(out, torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))


def test_median_of_even_count_is_the_middle_mean():
    u = torch.tensor([[1.0], [2.0], [10.0], [3.0]])
    assert torch.equal(CoordinateMedian()(u, torch.ones(4)), torch.tensor([2.5]))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: TrimmedMean(0.5), "beta must be in \\[0, 0.5\\), got 0.5"),
        (lambda: Krum(f=-1), "f must be >= 0, got -1"),
        (lambda: Krum(m=0), "m must be >= 1, got 0"),
        (lambda: NormBoundedMean(0.0), "max_norm must be > 0, got 0.0"),
    ],
)
def test_constructor_validation_names_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "mean"},
        {"name": "median"},
        {"name": "trimmed_mean", "beta": 0.2},
        {"name": "krum", "f": 1, "m": 2},
        {"name": "norm_bounded", "max_norm": 5.0},
    ],
)
def test_built_from_config_and_applied_per_group(spec):
    agg = build_aggregator(TypeAdapter(AggregatorConfig).validate_python(spec))
    g = torch.Generator().manual_seed(0)
    ups = [
        ClientUpdate(
            i,
            {
                "t.w": torch.randn(2, 3, generator=g),
                **({"h.b": torch.randn(2, generator=g)} if i < 2 else {}),
            },
            10,
            {"h": 5} if i < 2 else {},
        )
        for i in range(5)
    ]
    out = aggregate_by_group(ups, {"shared": ["t.w"], "task:h": ["h.b"], "task:x": ["x.b"]}, agg)
    assert set(out) == {"t.w", "h.b"} and out["t.w"].shape == (2, 3) and out["h.b"].shape == (2,)
