"""PowerSGD: rank-``r`` compression by one step of power iteration, warm-started from the previous
step's ``Q`` (Vogels, Karimireddy & Jaggi, 2019, "PowerSGD: Practical Low-Rank Gradient Compression
for Distributed Optimization", NeurIPS, Algorithm 1). Use it with error feedback (the default)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, need_generator, take


class PowerSGD:
    """A tensor of two or more dims is viewed as ``M`` (``n x m``: dim 0 by the rest) and sent as
    ``P_hat`` (``n x r``, orthonormal columns) and ``Q = M^T P_hat`` (``m x r``), where
    ``P_hat = orth(M Q_prev)``; decoded ``P_hat Q^T``, the projection of ``M`` onto ``span(P_hat)``,
    so ``||M - P_hat Q^T|| <= ||M||``.

    ``Q`` is kept in the sender's state (the link's, per tensor) and warm-starts the next step; the
    first ``Q_prev`` is drawn from the generator. Vectors, and matrices for which ``r (n + m) >= n m``,
    travel uncompressed (as the paper does for biases). float32 values, ``4 r (n + m)`` bytes.
    """

    part_names = ("p", "q")
    stochastic = True
    stateful = True

    def __init__(self, rank: int = 1):
        if rank < 1:
            raise ValueError(f"powersgd rank must be >= 1, got {rank}")
        self.rank = rank

    def dims(self, n: int, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``(rows, cols)`` when the tensor is compressed, ``None`` when it travels whole."""
        if len(shape) < 2 or shape[0] == 0 or n != _prod(shape):
            return None
        rows, cols = shape[0], n // shape[0]
        return (rows, cols) if self.rank * (rows + cols) < rows * cols else None

    def encode(
        self,
        values: Tensor,
        shape: tuple[int, ...],
        generator: torch.Generator | None,
        memory: Parts | None = None,
    ) -> Parts:
        d = self.dims(values.numel(), shape)
        if d is None:
            return {"p": values.float(), "q": torch.zeros(0)}
        m = values.reshape(d)
        q = (memory or {}).get("q")
        if q is None or q.shape != (d[1], self.rank):
            q = torch.randn(d[1], self.rank, generator=need_generator("powersgd", generator))
        p, _ = torch.linalg.qr(m @ q)  # reduced QR: orthonormal columns
        return {"p": p.contiguous(), "q": (m.T @ p).contiguous()}

    def after(self, memory: Parts, parts: Parts) -> Parts:
        return {**memory, "q": parts["q"]} if parts["q"].numel() else memory

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        d = self.dims(n, shape)
        if d is None:
            take(parts, "q", torch.float32, 0)
            return take(parts, "p", torch.float32, n)
        p = take(parts, "p", torch.float32, d[0] * self.rank).reshape(d[0], self.rank)
        q = take(parts, "q", torch.float32, d[1] * self.rank).reshape(d[1], self.rank)
        return (p @ q.T).reshape(-1)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
