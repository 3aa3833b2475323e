"""Simulated Byzantine clients: deterministic choice, exact count, attacks as configured."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.training import ByzantineConfig, ServerConfig
from fedmtl.fl.aggregation import weighted_mean
from fedmtl.fl.byzantine import attack, is_malicious, malicious_clients
from fedmtl.fl.robust import CoordinateMedian


def test_exact_fraction_and_deterministic():
    cfg = ByzantineConfig(fraction=0.2)
    a = malicious_clients(range(50), cfg, seed=1)
    assert len(a) == 10 and a == malicious_clients(range(50), cfg, seed=1)
    assert a != malicious_clients(range(50), cfg, seed=2)
    assert all(is_malicious(i, cfg, 1, num_clients=50) == (i in a) for i in range(50))


def test_none_means_honest():
    assert not is_malicious(0, None, 0) and malicious_clients(range(5), ServerConfig(), 0) == frozenset()
    assert attack({"w": torch.ones(2)}, None, torch.Generator())["w"].tolist() == [1.0, 1.0]


def test_bernoulli_without_num_clients_is_close_to_fraction():
    cfg = ByzantineConfig(fraction=0.3)
    share = sum(is_malicious(i, cfg, 0) for i in range(2000)) / 2000
    assert abs(share - 0.3) < 0.05


@pytest.mark.parametrize(("kind", "expect"), [("sign_flip", -3.0), ("scaled", 3.0)])
def test_deterministic_attacks(kind, expect):
    delta = {"w": torch.ones(3)}
    out = attack(delta, ServerConfig(byzantine={"attack": kind, "scale": 3.0}), torch.Generator())
    assert torch.equal(out["w"], torch.full((3,), expect)) and torch.equal(delta["w"], torch.ones(3))


def test_sign_flip_uses_the_honest_hint():
    out = attack(
        {"w": torch.ones(2)}, ByzantineConfig(scale=2.0), torch.Generator(), {"w": torch.tensor([1.0, -1.0])}
    )
    assert out["w"].tolist() == [-2.0, 2.0]


def test_gaussian_attack_uses_the_generator():
    cfg = ByzantineConfig(attack="gaussian", scale=5.0)
    a = attack({"w": torch.zeros(1000)}, cfg, torch.Generator().manual_seed(0))
    b = attack({"w": torch.zeros(1000)}, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a["w"], b["w"]) and 4.5 < float(a["w"].std()) < 5.5


def test_median_survives_what_breaks_the_mean():
    cfg = ByzantineConfig(fraction=0.3, attack="sign_flip", scale=50.0)
    g = torch.Generator().manual_seed(0)
    bad = malicious_clients(range(10), cfg, 0)
    rows = []
    for i in range(10):
        d = {"w": 1.0 + 0.05 * torch.randn(8, generator=g)}
        rows.append((attack(d, cfg, g) if i in bad else d)["w"])
    u, w = torch.stack(rows), torch.ones(10)
    assert float(weighted_mean(u, w).mean()) < 0 < float(CoordinateMedian()(u, w).mean())
