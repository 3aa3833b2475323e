"""QSGD: unbiased stochastic quantisation to ``s`` levels (Alistarh et al., 2017, "QSGD:
Communication-Efficient SGD via Gradient Quantization and Encoding", NeurIPS)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, need_generator, take
from fedmtl.comm.wire import PayloadError


class QSGD:
    """Per bucket of ``bucket_size`` coordinates: ``Q(v_i) = ||v|| sign(v_i) l_i / s``.

    ``l_i`` is ``floor(s |v_i| / ||v||)`` rounded up with probability equal to the remainder, so
    ``E[Q(v)] = v`` and every coordinate's error is below ``||v_bucket|| / s``. Levels travel as int8
    (int16 when ``s > 127``) and one float32 norm per bucket.
    """

    part_names = ("norms", "levels")
    stochastic = True

    def __init__(self, levels: int = 16, bucket_size: int = 512):
        if not 1 <= levels <= 32767:
            raise ValueError(f"qsgd levels must be in 1..32767, got {levels}")
        if bucket_size < 1:
            raise ValueError(f"qsgd bucket_size must be >= 1, got {bucket_size}")
        self.levels = levels
        self.bucket_size = bucket_size
        self.level_dtype = torch.int8 if levels <= 127 else torch.int16

    def _buckets(self, n: int) -> int:
        return -(-n // self.bucket_size)

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        g = need_generator("qsgd", generator)
        n, b = values.numel(), self.bucket_size
        padded = torch.zeros(self._buckets(n) * b)
        padded[:n] = values
        v = padded.reshape(-1, b)
        norms = v.norm(dim=1)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        r = (v.abs() / safe[:, None] * self.levels).clamp(max=self.levels)
        low = r.floor()
        up = torch.rand(r.shape, generator=g) < (r - low)
        lvl = (low + up.float()).clamp(max=self.levels) * torch.sign(v)
        return {"norms": norms.float(), "levels": lvl.reshape(-1)[:n].to(self.level_dtype)}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        nb, b = self._buckets(n), self.bucket_size
        norms = take(parts, "norms", torch.float32, nb)
        levels = take(parts, "levels", self.level_dtype, n)
        if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
            raise PayloadError("qsgd norms must be finite and >= 0")
        if bool((levels.abs() > self.levels).any()):
            raise PayloadError(f"qsgd levels exceed s={self.levels}")
        padded = torch.zeros(nb * b)
        padded[:n] = levels.float()
        return (padded.reshape(nb, b) * (norms / self.levels)[:, None]).reshape(-1)[:n]
