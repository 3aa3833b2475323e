"""Symmetric uniform 8-bit quantisation (per tensor or per output channel)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, take
from fedmtl.comm.wire import PayloadError


class Int8:
    """``q = round(x / s)`` with ``s = max|x| / 127``; decoded ``q * s``.

    The error of each coordinate is at most ``s / 2``. With ``per_channel`` a tensor of two or more
    dims gets one scale per row (dim 0), which bounds the error by that row's range; sparse values
    (after top-k / random-k) and vectors always use one scale.
    """

    part_names = ("q", "scale")
    stochastic = False

    def __init__(self, per_channel: bool = False):
        self.per_channel = per_channel

    def _rows(self, n: int, shape: tuple[int, ...]) -> int:
        numel = 1
        for d in shape:
            numel *= d
        if self.per_channel and len(shape) >= 2 and n == numel and shape[0] > 0:
            return shape[0]
        return 1

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        rows = self._rows(values.numel(), shape)
        v = values.reshape(rows, -1) if values.numel() else values.reshape(rows, 0)
        amax = v.abs().amax(dim=1) if v.shape[1] else torch.zeros(rows)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(v / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return {"q": q.reshape(-1), "scale": scale.float()}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        rows = self._rows(n, shape)
        q = take(parts, "q", torch.int8, n)
        scale = take(parts, "scale", torch.float32, rows)
        if not bool(torch.isfinite(scale).all()):
            raise PayloadError("int8 scale carries NaN or Inf")
        return (q.float().reshape(rows, -1) * scale[:, None]).reshape(-1)
