"""Lossless float32 and the two half-width float casts."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, take

_FP16_MAX = float(torch.finfo(torch.float16).max)


class Cast:
    """Send values in ``dtype``; decode back to float32.

    float32 is exact; float16 keeps a relative error <= 2**-11 inside its range (values beyond
    +-65504 are clamped rather than sent as Inf); bfloat16 keeps float32's range with relative error
    <= 2**-8.
    """

    part_names = ("values",)
    stochastic = False

    def __init__(self, dtype: torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"cast codec supports float32, float16 and bfloat16, got {dtype}")
        self.dtype = dtype

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        if self.dtype == torch.float16:
            values = values.clamp(-_FP16_MAX, _FP16_MAX)
        return {"values": values.to(self.dtype)}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        return take(parts, "values", self.dtype, n).float()
