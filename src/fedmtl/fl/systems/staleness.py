"""Staleness weights: how much an update computed on a model ``s`` server steps old counts.

FedBuff (Nguyen et al. 2022, Sec. 4) scales each buffered update by ``1 / sqrt(1 + s)``; FedAsync (Xie et
al. 2019, Sec. 5.2) proposed the polynomial and the hinge family. Each is a pure function of ``s >= 0``.
"""

from __future__ import annotations

from collections.abc import Callable

from fedmtl.config.systems import ConstantStaleness, HingeStaleness, PolynomialStaleness

StalenessWeight = Callable[[int], float]


def constant() -> StalenessWeight:
    """Every update weighs 1."""
    return lambda s: 1.0


def polynomial(a: float) -> StalenessWeight:
    """``(1 + s) ** -a``."""
    return lambda s: float((1.0 + s) ** -a)


def hinge(a: float, b: int) -> StalenessWeight:
    """1 while ``s <= b``, then ``1 / (a (s - b) + 1)``."""
    return lambda s: 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0)


def build_staleness(cfg: ConstantStaleness | PolynomialStaleness | HingeStaleness) -> StalenessWeight:
    """The weight function a ``systems.mode.staleness`` config names."""
    if isinstance(cfg, PolynomialStaleness):
        return polynomial(cfg.a)
    if isinstance(cfg, HingeStaleness):
        return hinge(cfg.a, cfg.b)
    return constant()
