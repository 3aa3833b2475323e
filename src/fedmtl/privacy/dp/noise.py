"""Gaussian noise, drawn from an explicit generator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T", Tensor, Mapping[str, Tensor])


def gaussian_like(x: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``N(0, std^2)`` noise of ``x``'s shape and dtype."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return torch.zeros_like(x)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * std


def add_noise(x: T, std: float, generator: torch.Generator | None) -> T:
    """``x + N(0, std^2 I)`` for a tensor or a dict of tensors (a new value; ``x`` is not modified).

    Args:
        x: a sum (or mean) of clipped updates, a tensor or name -> tensor.
        std: the per-coordinate standard deviation, e.g. ``sigma * C`` on a sum.
        generator: the round's generator (pass one for reproducible runs).
    """
    if isinstance(x, Tensor):
        return x + gaussian_like(x, std, generator)
    return {k: v + gaussian_like(v, std, generator) for k, v in sorted(x.items())}
