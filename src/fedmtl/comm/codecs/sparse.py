"""Sparsifiers: top-k and random-k (Stich, Cordonnier & Jaggi, 2018, "Sparsified SGD with Memory";
Lin et al., 2018, "Deep Gradient Compression"). Pair them with error feedback (the default)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, need_generator, take
from fedmtl.comm.wire import PayloadError


def _kept(fraction: float, numel: int) -> int:
    return min(numel, max(1, math.ceil(fraction * numel))) if numel else 0


class TopK:
    """Keep the ``ceil(fraction * d)`` largest-magnitude coordinates; indices travel as int32.

    ``||x - C(x)||^2 <= (1 - k/d) ||x||^2``.
    """

    part_names = ("indices",)
    stochastic = False

    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise ValueError(f"topk fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def kept(self, numel: int) -> int:
        return _kept(self.fraction, numel)

    def select(self, x: Tensor, generator: torch.Generator | None) -> tuple[Parts, Tensor]:
        idx = torch.topk(x.abs(), self.kept(x.numel()), sorted=False).indices.sort().values
        return {"indices": idx.to(torch.int32)}, x[idx]

    def expand(self, parts: Parts, values: Tensor, numel: int) -> Tensor:
        idx = take(parts, "indices", torch.int32, self.kept(numel)).long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise PayloadError(f"topk indices outside [0, {numel})")
        out = torch.zeros(numel)
        out[idx] = values
        return out


class RandK:
    """Keep ``ceil(fraction * d)`` coordinates drawn uniformly without replacement.

    Only a 64-bit seed travels for the indices (drawn from the caller's generator); the receiver
    regenerates them. In expectation ``||x - C(x)||^2 = (1 - k/d) ||x||^2``.
    """

    part_names = ("seed",)
    stochastic = True

    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise ValueError(f"randk fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def kept(self, numel: int) -> int:
        return _kept(self.fraction, numel)

    def _indices(self, seed: int, numel: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(numel, generator=g)[: self.kept(numel)].sort().values

    def select(self, x: Tensor, generator: torch.Generator | None) -> tuple[Parts, Tensor]:
        g = need_generator("randk", generator)
        seed = torch.randint(0, 2**62, (1,), generator=g, dtype=torch.int64)
        idx = self._indices(int(seed), x.numel())
        return {"seed": seed}, x[idx]

    def expand(self, parts: Parts, values: Tensor, numel: int) -> Tensor:
        seed = int(take(parts, "seed", torch.int64, 1))
        if seed < 0:
            raise PayloadError(f"randk seed must be >= 0, got {seed}")
        out = torch.zeros(numel)
        out[self._indices(seed, numel)] = values
        return out
