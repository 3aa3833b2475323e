"""Cohort sampling: which clients take part in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def cohort_size(num_clients: int, clients_per_round: int | None, fraction: float | None) -> int:
    """Cohort size from a count or a fraction (default: every client)."""
    if clients_per_round is not None:
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(f"clients_per_round={clients_per_round} must lie in 1..{num_clients}")
        return clients_per_round
    if fraction is not None:
        return max(1, min(num_clients, math.ceil(fraction * num_clients)))
    return num_clients


def sample_cohort(num_clients: int, size: int, generator: torch.Generator) -> list[int]:
    """``size`` distinct clients uniformly at random, in increasing order."""
    return sample_among(range(num_clients), size, generator)


def sample_among(candidates: Sequence[int], size: int, generator: torch.Generator) -> list[int]:
    """``size`` distinct clients of ``candidates`` (the online ones, say) uniformly at random, in increasing
    order; all of them when there are no more than ``size``. Over ``range(n)`` it draws what
    :func:`sample_cohort` draws."""
    pool = list(candidates)
    if size >= len(pool):
        return sorted(pool)
    return sorted(pool[i] for i in torch.randperm(len(pool), generator=generator)[:size].tolist())
