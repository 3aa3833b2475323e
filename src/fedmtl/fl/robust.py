"""Robust aggregators: small validated stateless callables ``(updates [N, P], weights [N]) -> [P]``.

Rows with weight 0 are ignored. The order statistics (median, trimmed mean) and Krum's selection are
unweighted, as in their papers; Krum then takes the weighted mean of the updates it selected, and
norm-bounded averaging the weighted mean of the clipped updates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.config import training as tcfg
from fedmtl.fl.aggregation import check_stack, weighted_mean
from fedmtl.registry import register


def _active(updates: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    check_stack(updates, weights)
    keep = weights > 0
    return updates[keep], weights[keep]


class CoordinateMedian:
    """Coordinate-wise median; the mean of the two middle values for an even count.

    Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML.
    """

    def __repr__(self) -> str:
        return "CoordinateMedian()"

    def __call__(self, updates: Tensor, weights: Tensor) -> Tensor:
        rows, _ = _active(updates, weights)
        s = rows.sort(dim=0).values
        n = s.shape[0]
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class TrimmedMean:
    """Coordinate-wise mean after dropping the ``floor(beta * N)`` largest and smallest values.

    Yin et al., 2018 (see :class:`CoordinateMedian`).

    Args:
        beta: share trimmed from each side, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1):
        if not 0 <= beta < 0.5:
            raise ValueError(f"trimmed mean beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta})"

    def __call__(self, updates: Tensor, weights: Tensor) -> Tensor:
        rows, _ = _active(updates, weights)
        n = rows.shape[0]
        k = int(self.beta * n)
        return rows.sort(dim=0).values[k : n - k].mean(dim=0)


class Krum:
    """Krum (``m = 1``) and Multi-Krum (``m > 1``).

    Each update is scored by the summed squared distance to its ``N - f - 2`` nearest neighbours; the
    weighted mean of the ``min(m, N - f)`` best-scored updates is returned. Krum needs ``N >= 2f + 3``;
    with fewer updates (a task head held by few clients) it falls back to the coordinate-wise median.

    Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS.

    Args:
        f: number of Byzantine updates tolerated (>= 0).
        m: updates averaged (>= 1).
    """

    def __init__(self, f: int = 1, m: int = 1):
        if f < 0:
            raise ValueError(f"krum f must be >= 0, got {f}")
        if m < 1:
            raise ValueError(f"krum m must be >= 1, got {m}")
        self.f, self.m = f, m

    def __repr__(self) -> str:
        return f"Krum(f={self.f}, m={self.m})"

    def __call__(self, updates: Tensor, weights: Tensor) -> Tensor:
        rows, w = _active(updates, weights)
        n = rows.shape[0]
        if n < 2 * self.f + 3:
            return CoordinateMedian()(rows, w)
        d = torch.cdist(rows[None], rows[None], compute_mode="donot_use_mm_for_euclid_dist")[0] ** 2
        k = n - self.f - 2
        scores = d.sort(dim=1).values[:, 1 : k + 1].sum(dim=1)  # column 0 is the distance to itself
        chosen = torch.argsort(scores, stable=True)[: min(self.m, n - self.f)]
        return weighted_mean(rows[chosen], w[chosen])


class NormBoundedMean:
    """Clip each update to L2 norm ``max_norm``, then take the weighted mean.

    Sun et al., 2019, "Can You Really Backdoor Federated Learning?".

    Args:
        max_norm: the norm bound (> 0), applied per parameter group by :func:`aggregate_by_group`.
    """

    def __init__(self, max_norm: float = 1.0):
        if not max_norm > 0:
            raise ValueError(f"norm bound max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def __repr__(self) -> str:
        return f"NormBoundedMean(max_norm={self.max_norm})"

    def __call__(self, updates: Tensor, weights: Tensor) -> Tensor:
        rows, w = _active(updates, weights)
        norms = rows.norm(dim=1, keepdim=True)
        factor = torch.where(
            norms > self.max_norm, self.max_norm / norms.clamp(min=1e-30), torch.ones_like(norms)
        )
        return weighted_mean(rows * factor, w)


register("aggregator", "median", lambda cfg: CoordinateMedian(), tcfg.CoordinateMedian)
register("aggregator", "trimmed_mean", lambda cfg: TrimmedMean(cfg.beta), tcfg.TrimmedMean)
register("aggregator", "krum", lambda cfg: Krum(cfg.f, cfg.m), tcfg.KrumAggregator)
register("aggregator", "norm_bounded", lambda cfg: NormBoundedMean(cfg.max_norm), tcfg.NormBoundedMean)
