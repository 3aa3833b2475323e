"""Quantisation into the ring Z_{2^bits} and the neighbour graph masks are exchanged on.

Masks only cancel exactly over integers, so each client's float update is clipped to
``[lo, hi]`` per coordinate and mapped to ``{0, ..., L}`` with ``L = (2^bits - 1) // max_summands``;
the sum of at most ``max_summands`` such integers never wraps, so the unmasked ring sum *is* the
integer sum and dequantises to the clipped float sum (up to rounding, unbiased when stochastic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def levels(bits: int, max_summands: int) -> int:
    """Largest quantisation level L such that ``max_summands * L < 2^bits``."""
    if max_summands < 1:
        raise ValueError(f"max_summands must be >= 1, got {max_summands}")
    level = ((1 << bits) - 1) // max_summands
    if level < 2:
        raise ValueError(f"bits={bits} leaves fewer than 2 levels for {max_summands} summands; raise bits")
    return level


def quantise(
    x: Tensor,
    lo: Tensor | float,
    hi: Tensor | float,
    level: int,
    *,
    stochastic: bool,
    generator: torch.Generator | None,
) -> np.ndarray:
    """Clip ``x`` to ``[lo, hi]`` and map it to integers in ``{0..level}`` (uint64).

    Args:
        x: a flat float tensor.
        lo, hi: per-coordinate (broadcastable) clip bounds, ``lo < hi``.
        level: L from :func:`levels`.
        stochastic: unbiased stochastic rounding (needs ``generator``) instead of round-to-nearest.
        generator: randomness for stochastic rounding.
    """
    x64 = x.detach().reshape(-1).to(torch.float64)
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    if bool((hi_t <= lo_t).any()):
        raise ValueError(f"quantisation range must have lo < hi, got lo={lo}, hi={hi}")
    scaled = (torch.minimum(torch.maximum(x64, lo_t), hi_t) - lo_t) / (hi_t - lo_t) * level
    if stochastic:
        if generator is None:
            raise ValueError("stochastic rounding needs a torch.Generator")
        q = torch.floor(scaled + torch.rand(scaled.shape, generator=generator, dtype=torch.float64))
    else:
        q = torch.round(scaled)
    return q.clamp_(0, level).to(torch.int64).numpy().astype(np.uint64)


def dequantise_sum(
    total: np.ndarray, count: int, lo: Tensor | float, hi: Tensor | float, level: int
) -> Tensor:
    """Float sum of ``count`` clients' values from the integer sum of their quantised values."""
    t = torch.from_numpy(total.astype(np.float64))
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    return t / level * (hi_t - lo_t) + count * lo_t


def default_degree(n: int) -> int:
    """SecAgg+ neighbourhood size: an even number near ``3 log2 n`` (Bell et al. use O(log n))."""
    k = 2 * math.ceil(1.5 * math.log2(max(n, 2)))
    return min(k, n - 1 if (n - 1) % 2 == 0 else n - 2) if n > 2 else n - 1


def neighbour_graph(
    clients: Sequence[int], degree: int | None, generator: torch.Generator | None
) -> dict[int, frozenset[int]]:
    """Who exchanges masks with whom.

    ``degree=None`` is the complete graph (original SecAgg). Otherwise a k-regular Harary graph on a
    random cyclic order of the clients (each linked to k/2 on either side), as in SecAgg+
    (Bell et al., CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead").

    Args:
        clients: distinct client ids.
        degree: even k, or None for complete.
        generator: randomness for the cyclic order (None: identity order).
    """
    ids = list(clients)
    if len(set(ids)) != len(ids):
        raise ValueError(f"client ids must be distinct, got {ids}")
    n = len(ids)
    if degree is None or degree >= n - 1:
        return {i: frozenset(j for j in ids if j != i) for i in ids}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be an even number >= 2, got {degree}")
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    ring = [ids[p] for p in order]
    half = degree // 2
    return {ring[p]: frozenset(ring[(p + d) % n] for d in range(-half, half + 1) if d != 0) for p in range(n)}
