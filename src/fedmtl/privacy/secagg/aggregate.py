"""The entry point the federated loop calls: float updates in, per-group float sums out.

Each client's update for each parameter group it holds (a flat tensor) is clipped to
``[-clip_range, clip_range]``, quantised into ``Z_{2^bits}`` and secure-summed among that group's
holders (:mod:`fedmtl.privacy.secagg.protocol`); the server gets only the sums. For weighted FedAvg
each client multiplies its vector by its weight in ``[0, 1]`` and appends the weight as an extra
coordinate, so the server learns ``sum_i w_i x_i`` and ``sum_i w_i`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmtl.config.privacy import SecureAggregationConfig
from fedmtl.privacy.secagg.masking import dequantise_sum, levels, quantise
from fedmtl.privacy.secagg.protocol import ProtocolStats, SecAggError, run_protocol


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns from one secure aggregation.

    Attributes:
        sums: group -> float64 sum over ``contributors[group]`` of the clipped (weighted) updates.
        weight_sums: group -> sum of the contributors' weights (their count when unweighted).
        contributors: group -> ids of the surviving holders whose inputs are in the sum.
        withheld: groups with fewer than ``min_group_survivors`` surviving holders: no sum revealed.
        ring_sums: group -> the exact integer sum mod ``2^bits`` (before dequantisation).
        dropped: clients whose masked inputs never arrived.
        stats: bytes per client and seconds.
    """

    sums: dict[str, Tensor]
    weight_sums: dict[str, float]
    contributors: dict[str, tuple[int, ...]]
    withheld: tuple[str, ...]
    ring_sums: dict[str, np.ndarray]
    dropped: tuple[int, ...]
    stats: ProtocolStats

    def means(self) -> dict[str, Tensor]:
        """Weighted mean per group: ``sums[g] / weight_sums[g]``."""
        return {g: s / self.weight_sums[g] for g, s in self.sums.items() if self.weight_sums[g] > 0}


def sample_dropouts(
    clients: Collection[int], rate: float, generator: torch.Generator | None
) -> frozenset[int]:
    """Each client drops independently with probability ``rate`` (a simulation of unreliable devices)."""
    if rate <= 0:
        return frozenset()
    ids = sorted(clients)
    draws = torch.rand(len(ids), generator=generator)
    return frozenset(c for c, u in zip(ids, draws.tolist(), strict=False) if u < rate)


@dataclass(frozen=True)
class RingBounds:
    """How one group's float vector maps into the ring: per-coordinate clip bounds and the level L.

    Public (the server sends them to a deployed client): they depend on the group's size, its number
    of holders, the clip range and whether a weight coordinate is appended.
    """

    lo: Tensor
    hi: Tensor
    level: int
    weighted: bool


def ring_bounds(
    size: int, holders: int, cfg: SecureAggregationConfig, *, weighted: bool, clip_range: float | None = None
) -> RingBounds:
    """Bounds for a group of ``size`` values summed over ``holders`` clients (plus a weight in [0, 1] if weighted)."""
    r = cfg.clip_range if clip_range is None else clip_range
    lo = torch.full((size + weighted,), -r, dtype=torch.float64)
    hi = torch.full_like(lo, r)
    if weighted:
        lo[-1], hi[-1] = 0.0, 1.0
    return RingBounds(lo, hi, levels(cfg.bits, holders), weighted)


def encode_input(
    x: Tensor,
    bounds: RingBounds,
    cfg: SecureAggregationConfig,
    *,
    weight: float | None,
    generator: torch.Generator | None,
    who: str = "a client",
) -> np.ndarray:
    """One client's group vector as its ring input: times its weight with the weight appended, clipped, quantised."""
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() + bounds.weighted != bounds.lo.numel():
        raise ValueError(f"{who} sent {x.numel()} values, the group has {bounds.lo.numel() - bounds.weighted}")
    if bounds.weighted:
        if weight is None or not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight of {who} is {weight}; scale weights into [0, 1]")
        x = torch.cat([x * weight, torch.tensor([weight], dtype=torch.float64)])
    return quantise(
        x, bounds.lo, bounds.hi, bounds.level, stochastic=cfg.rounding == "stochastic", generator=generator
    )


def decode_sum(total: np.ndarray, count: int, bounds: RingBounds) -> tuple[Tensor, float | None]:
    """The float sum of ``count`` contributors from the ring sum, and the sum of their weights (if weighted)."""
    flat = dequantise_sum(total, count, bounds.lo, bounds.hi, bounds.level)
    if bounds.weighted:
        return flat[:-1], float(flat[-1])
    return flat, None


def secure_aggregate(
    updates: Mapping[int, Mapping[str, Tensor]],
    cfg: SecureAggregationConfig,
    *,
    weights: Mapping[int, Mapping[str, float]] | None = None,
    dropped: Collection[int] | None = None,
    late_dropped: Collection[int] = (),
    generator: torch.Generator | None = None,
    clip_ranges: Mapping[str, float] | None = None,
) -> SecAggResult:
    """Secure per-group sums of the clients' updates (one key setup for all groups of a round).

    Args:
        updates: client id -> group name -> flat update of that group (clients hold different groups).
        cfg: secure aggregation settings.
        weights: client id -> group -> weight in ``[0, 1]`` (e.g. samples / a public cap). None: unweighted.
        dropped: clients dropping after sharing keys (None: sample with ``cfg.dropout_rate``).
        late_dropped: clients whose masked input arrives but who miss the unmasking round.
        generator: randomness for keys, rounding and dropouts (None: OS CSPRNG and no stochastic
            rounding reproducibility; stochastic rounding then needs a generator).
        clip_ranges: per-group override of ``cfg.clip_range`` (e.g. 1.0 for a group of counts).

    Returns:
        The per-group sums the server learns, and the protocol's cost.

    Raises:
        SecAggError: fewer than t clients survive, or a share fails authentication; nothing is revealed,
            and its ``dropped`` names the clients that had dropped out.
    """
    if not updates:
        raise ValueError("secure_aggregate needs at least one client update")
    holders: dict[str, list[int]] = {}
    for c, groups in updates.items():
        for g in groups:
            holders.setdefault(g, []).append(c)
    inputs: dict[int, dict[str, np.ndarray]] = {c: {} for c in updates}
    bounds: dict[str, RingBounds] = {}
    for g, hs in holders.items():
        clip = (clip_ranges or {}).get(g)
        bounds[g] = ring_bounds(updates[hs[0]][g].numel(), len(hs), cfg, weighted=weights is not None, clip_range=clip)
        for c in hs:
            inputs[c][g] = encode_input(
                updates[c][g],
                bounds[g],
                cfg,
                weight=None if weights is None else float(weights[c][g]),
                generator=generator,
                who=f"client {c} for group {g!r}",
            )
    if dropped is None:
        dropped = sample_dropouts(updates.keys(), cfg.dropout_rate, generator) - set(late_dropped)
    try:
        out = run_protocol(inputs, cfg, dropped=dropped, late_dropped=late_dropped, generator=generator)
    except SecAggError as exc:  # the round is abandoned: say who had dropped out
        exc.dropped = tuple(sorted({*dropped, *late_dropped}))
        raise
    sums, weight_sums = {}, {}
    for g, total in out.sums.items():
        sums[g], w = decode_sum(total, len(out.contributors[g]), bounds[g])
        weight_sums[g] = float(len(out.contributors[g])) if w is None else w
    return SecAggResult(
        sums, weight_sums, out.contributors, out.withheld, out.sums, tuple(sorted(dropped)), out.stats
    )
