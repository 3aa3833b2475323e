"""PowerSGD: rank-``r`` compression by one step of power iteration, warm-started from the previous
step's ``Q`` (Vogels, Karimireddy & Jaggi, 2019, "PowerSGD: Practical Low-Rank Gradient Compression
for Distributed Optimization", NeurIPS, Algorithm 1). Use it with error feedback (the default)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, need_generator, take
from fedmtl.comm.wire import PayloadError

#: the widths a factor may travel in: float32, float16, or int8 with one float32 scale per column
BITS = (32, 16, 8)


class PowerSGD:
    """A tensor of two or more dims is viewed as ``M`` (``n x m``: dim 0 by the rest, so a conv kernel
    ``[out, in, k]`` is ``out x (in k)``) and sent as ``P_hat`` (``n x r``, orthonormal columns) and
    ``Q = M^T P_hat`` (``m x r``), where ``P_hat = orth(M Q_prev)``; decoded ``P_hat Q^T``, the projection
    of ``M`` onto ``span(P_hat)``, so ``||M - P_hat Q^T|| <= ||M||`` (with ``bits`` 32).

    ``Q`` is kept in the sender's state (the link's, per tensor) and warm-starts the next step; the
    first ``Q_prev`` is drawn from the generator. Vectors, and matrices for which ``r (n + m) >= n m``,
    travel uncompressed (as the paper does for biases).

    ``bits`` narrows what travels: 32 (float32, ``4 r (n + m)`` bytes), 16 (float16, half that) or 8
    (int8 with a float32 scale per factor column, a quarter plus ``8 r`` bytes; tensors sent whole get
    one scale). The narrowing error is left to error feedback, like the rank's (Vogels et al. send
    float32; 8-bit factors are this library's choice for federated uplinks where bytes matter more).
    """

    stochastic = True
    stateful = True

    def __init__(self, rank: int = 1, bits: int = 32):
        if rank < 1:
            raise ValueError(f"powersgd rank must be >= 1, got {rank}")
        if bits not in BITS:
            raise ValueError(f"powersgd bits must be one of {BITS}, got {bits}")
        self.rank, self.bits = rank, bits
        self.part_names: tuple[str, ...] = ("p", "q") if bits != 8 else ("p", "p_scale", "q", "q_scale")
        self._dtype = {32: torch.float32, 16: torch.float16, 8: torch.int8}[bits]

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
            return {
                **self._narrow("p", values.float().reshape(-1, 1)),
                **self._narrow("q", torch.zeros(0, 1)),
            }
        m = values.reshape(d)
        q = (memory or {}).get("q")
        if q is None or q.shape != (d[1], self.rank):
            q = torch.randn(d[1], self.rank, generator=need_generator("powersgd", generator))
        p, _ = torch.linalg.qr(m @ q)  # reduced QR: orthonormal columns
        q = m.T @ p
        # the warm start is the exact Q (a part named with "_" stays with the sender); what travels may be narrower
        return {**self._narrow("p", p), **self._narrow("q", q), "_q": q}

    def after(self, memory: Parts, parts: Parts) -> Parts:
        return {**memory, "q": parts["_q"]} if "_q" in parts else memory

    def _narrow(self, name: str, factor: Tensor) -> Parts:
        """A ``k x c`` factor in the codec's width (int8: one scale per column)."""
        if self.bits != 8:
            values = factor.clamp(-65504.0, 65504.0) if self.bits == 16 else factor
            return {name: values.reshape(-1).to(self._dtype).contiguous()}
        if not factor.numel():
            return {name: torch.zeros(0, dtype=torch.int8), f"{name}_scale": torch.zeros(0)}
        amax = factor.abs().amax(dim=0)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(factor / scale).clamp(-127, 127).to(torch.int8)
        return {name: q.reshape(-1).contiguous(), f"{name}_scale": scale.float()}

    def _widen(self, parts: Parts, name: str, rows: int, cols: int) -> Tensor:
        values = take(parts, name, self._dtype, rows * cols).float().reshape(rows, cols)
        if self.bits != 8:
            return values
        scale = take(parts, f"{name}_scale", torch.float32, cols if rows else 0)
        if not bool(torch.isfinite(scale).all()):
            raise PayloadError(f"powersgd {name} scales carry NaN or Inf")
        return values * scale if rows else values

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor:
        d = self.dims(n, shape)
        if d is None:
            self._widen(parts, "q", 0, 1)
            return self._widen(parts, "p", n, 1).reshape(-1)
        p = self._widen(parts, "p", d[0], self.rank)
        q = self._widen(parts, "q", d[1], self.rank)
        return (p @ q.T).reshape(-1)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
