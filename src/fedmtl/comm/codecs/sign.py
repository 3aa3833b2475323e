"""Scaled sign compression: signSGD with a magnitude (Bernstein et al., 2018, "signSGD"; Karimireddy
et al., 2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, take
from fedmtl.comm.wire import PayloadError

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


class ScaledSign:
    """``C(x) = (||x||_1 / d) sign(x)``, one bit per coordinate plus one float32 scale.

    This is EF-signSGD's compressor: ``||C(x) - x||^2 = (1 - ||x||_1^2 / (d ||x||_2^2)) ||x||_2^2``,
    so it is a contraction and error feedback makes it converge. Zero is sent as ``+``. With
    ``block_size`` each block of that many coordinates gets its own scale (its mean magnitude), and the
    identity holds per block, so the error is never larger than with one scale for the tensor.
    """

    part_names = ("bits", "scale")
    stochastic = False

    def __init__(self, block_size: int | None = None):
        if block_size is not None and block_size < 1:
            raise ValueError(f"sign block_size must be >= 1, got {block_size}")
        self.block_size = block_size

    def _blocks(self, n: int) -> int:
        return 1 if self.block_size is None else max(1, -(-n // self.block_size))

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        n = values.numel()
        if self.block_size is None or n == 0:
            scale = values.abs().mean().reshape(1) if n else torch.zeros(1)
        else:
            b = self.block_size
            sums = torch.zeros(self._blocks(n) * b)
            sums[:n] = values.abs()
            counts = torch.full((self._blocks(n),), float(b))
            counts[-1] = n - b * (self._blocks(n) - 1)
            scale = sums.reshape(-1, b).sum(dim=1) / counts
        pos = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8)
        pos[:n] = (values >= 0).to(torch.uint8)
        bits = (pos.reshape(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)
        return {"bits": bits, "scale": scale.float()}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        bits = take(parts, "bits", torch.uint8, -(-n // 8))
        scale = take(parts, "scale", torch.float32, self._blocks(n))
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise PayloadError("sign scale must be finite and >= 0")
        pos = (bits[:, None] & _BITS).ne(0).reshape(-1)[:n]
        per = scale.repeat_interleave(self.block_size)[:n] if self.block_size is not None else scale
        return torch.where(pos, per, -per)
