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
    bounds: dict[str, tuple[Tensor, Tensor, int]] = {}
    for g, hs in holders.items():
        size = updates[hs[0]][g].numel()
        r = (clip_ranges or {}).get(g, cfg.clip_range)
        lo = torch.full((size + (weights is not None),), -r, dtype=torch.float64)
        hi = torch.full_like(lo, r)
        if weights is not None:
            lo[-1], hi[-1] = 0.0, 1.0
        level = levels(cfg.bits, len(hs))
        bounds[g] = (lo, hi, level)
        for c in hs:
            x = updates[c][g].detach().reshape(-1).to(torch.float64)
            if x.numel() != size:
                raise ValueError(f"client {c} sent {x.numel()} values for group {g!r}, others {size}")
            if weights is not None:
                w = float(weights[c][g])
                if not 0.0 <= w <= 1.0:
                    raise ValueError(
                        f"weight of client {c} for group {g!r} is {w}; scale weights into [0, 1]"
                    )
                x = torch.cat([x * w, torch.tensor([w], dtype=torch.float64)])
            inputs[c][g] = quantise(
                x, lo, hi, level, stochastic=cfg.rounding == "stochastic", generator=generator
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
        lo, hi, level = bounds[g]
        flat = dequantise_sum(total, len(out.contributors[g]), lo, hi, level)
        if weights is not None:
            sums[g], weight_sums[g] = flat[:-1], float(flat[-1])
        else:
            sums[g], weight_sums[g] = flat, float(len(out.contributors[g]))
    return SecAggResult(
        sums, weight_sums, out.contributors, out.withheld, out.sums, tuple(sorted(dropped)), out.stats
    )
