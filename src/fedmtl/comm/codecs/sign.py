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
    so it is a contraction and error feedback makes it converge. Zero is sent as ``+``.
    """

    part_names = ("bits", "scale")
    stochastic = False

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        n = values.numel()
        scale = values.abs().mean().reshape(1) if n else torch.zeros(1)
        pos = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8)
        pos[:n] = (values >= 0).to(torch.uint8)
        bits = (pos.reshape(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)
        return {"bits": bits, "scale": scale.float()}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        bits = take(parts, "bits", torch.uint8, -(-n // 8))
        scale = take(parts, "scale", torch.float32, 1)
        if not bool(torch.isfinite(scale).all()) or float(scale) < 0:
            raise PayloadError("sign scale must be finite and >= 0")
        pos = (bits[:, None] & _BITS).ne(0).reshape(-1)[:n]
        return torch.where(pos, scale, -scale)
