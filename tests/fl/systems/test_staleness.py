"""Staleness weights from their formulas (FedBuff: Nguyen et al. 2022; FedAsync: Xie et al. 2019)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedmtl.config.systems import ConstantStaleness, FedBuffMode, HingeStaleness, PolynomialStaleness
from fedmtl.fl.systems import build_staleness


@pytest.mark.parametrize("s", [0, 1, 2, 3, 7, 20])
def test_polynomial_is_one_plus_s_to_the_minus_a(s: int) -> None:
    assert build_staleness(PolynomialStaleness(a=0.5))(s) == pytest.approx(1 / (1 + s) ** 0.5)
    assert build_staleness(PolynomialStaleness(a=2.0))(s) == pytest.approx(1 / (1 + s) ** 2)


def test_hinge_is_one_up_to_b_then_decays() -> None:
    w = build_staleness(HingeStaleness(a=10.0, b=4))
    assert [w(s) for s in range(5)] == [1.0] * 5
    assert w(5) == pytest.approx(1 / 11)
    assert w(7) == pytest.approx(1 / 31)


def test_constant_ignores_staleness() -> None:
    assert {build_staleness(ConstantStaleness())(s) for s in range(10)} == {1.0}


def test_zero_staleness_weighs_one_for_every_function() -> None:
    for cfg in (ConstantStaleness(), PolynomialStaleness(a=3.0), HingeStaleness(a=5.0, b=0)):
        assert build_staleness(cfg)(0) == 1.0


def test_buffer_larger_than_concurrency_is_refused() -> None:
    with pytest.raises(ValidationError, match="buffer_size=5 exceeds systems.mode.concurrency=4"):
        FedBuffMode(buffer_size=5, concurrency=4)
