"""Block quantisation with stochastic rounding: ``b``-bit integers and one float32 scale per block.

Stochastic rounding makes the quantiser unbiased (Gupta et al., 2015, "Deep Learning with Limited
Numerical Precision", ICML); one scale per block of coordinates bounds the error by the block's range
rather than the tensor's (Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization",
ICLR). With 2 bits it is TernGrad's ternary code per block (Wen et al., 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, need_generator, take
from fedmtl.comm.wire import PayloadError

BITS = (2, 4, 8)


class BlockQuantiser:
    """Per block of ``block_size`` coordinates: ``s = max|v|``, ``L = 2**(bits-1) - 1`` levels per sign,
    ``q_i = floor(L v_i / s + u_i)`` with ``u_i ~ U[0, 1)``; decoded ``q_i s / L``.

    ``E[Q(v)] = v`` and every coordinate's error is below ``s / L`` (its block's range over the levels).
    The integers, offset by ``L`` to be non-negative, are packed ``8 / bits`` to a byte.
    Bytes per coordinate: ``bits / 8`` plus ``4 / block_size`` for the scales.
    """

    part_names = ("codes", "scale")
    stochastic = True

    def __init__(self, bits: int = 4, block_size: int = 64):
        if bits not in BITS:
            raise ValueError(f"blockq bits must be one of {BITS}, got {bits}")
        if block_size < 1:
            raise ValueError(f"blockq block_size must be >= 1, got {block_size}")
        self.bits = bits
        self.block_size = block_size
        self.levels = 2 ** (bits - 1) - 1
        self.per_byte = 8 // bits

    def _blocks(self, n: int) -> int:
        return -(-n // self.block_size)

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts:
        g = need_generator("blockq", generator)
        n, b, L = values.numel(), self.block_size, self.levels
        padded = torch.zeros(self._blocks(n) * b)
        padded[:n] = values
        v = padded.reshape(-1, b)
        scale = v.abs().amax(dim=1) if v.numel() else torch.zeros(0)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        r = (v / safe[:, None] * L).clamp(-L, L)
        q = torch.floor(r + torch.rand(r.shape, generator=g)).clamp(-L, L)
        return {"codes": self._pack((q.reshape(-1)[:n] + L).to(torch.uint8)), "scale": scale.float()}

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        scale = take(parts, "scale", torch.float32, self._blocks(n))
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise PayloadError("blockq scales must be finite and >= 0")
        codes = self._unpack(take(parts, "codes", torch.uint8, -(-n // self.per_byte)), n)
        if bool((codes > 2 * self.levels).any()):
            raise PayloadError(f"blockq codes exceed {2 * self.levels}")
        padded = torch.zeros(self._blocks(n) * self.block_size)
        padded[:n] = codes.float() - self.levels
        out = padded.reshape(-1, self.block_size) * (scale / self.levels)[:, None]
        values: Tensor = out.reshape(-1)[:n]
        return values

    def _pack(self, codes: Tensor) -> Tensor:
        k = self.per_byte
        padded = torch.zeros(-(-codes.numel() // k) * k, dtype=torch.uint8)
        padded[: codes.numel()] = codes
        shifts = torch.arange(k, dtype=torch.uint8) * self.bits
        return (padded.reshape(-1, k) << shifts).sum(dim=1, dtype=torch.uint8)

    def _unpack(self, packed: Tensor, n: int) -> Tensor:
        shifts = torch.arange(self.per_byte, dtype=torch.uint8) * self.bits
        mask = (1 << self.bits) - 1
        return ((packed[:, None] >> shifts) & mask).reshape(-1)[:n]
