"""Count sketch of an update, unsketched to its heavy hitters by the receiver (Charikar, Chen &
Farach-Colton, 2002, "Finding Frequent Items in Data Streams"; as in FetchSGD: Rothchild et al., 2020,
"FetchSGD: Communication-Efficient Federated Learning with Sketching", ICML)."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts


class CountSketch:
    """``rows x cols`` table, ``S[r, h_r(j)] += s_r(j) x_j``; the receiver estimates each coordinate by
    ``median_r s_r(j) S[r, h_r(j)]`` and keeps the ``ceil(topk * d)`` largest estimates.

    ``cols = ceil(fraction * d / rows)``; hashes ``h_r`` and signs ``s_r`` come from ``seed`` and ``d``
    alone, so sender and receiver (and every client) share them and nothing but the table travels:
    the table's values go through the chain's quantiser. A tensor whose table would not be smaller than
    itself travels whole. The sketch is linear, so FetchSGD sums clients' sketches before unsketching;
    here each payload is unsketched on its own (the server decodes every client's update), which keeps
    the codec a drop-in stage; the sender's error feedback (the default) keeps what was not recovered.
    """

    part_names: tuple[str, ...] = ()
    stochastic = False

    def __init__(self, fraction: float = 0.05, rows: int = 5, topk: float = 0.01, seed: int = 0):
        if not 0 < fraction <= 1:
            raise ValueError(f"sketch fraction must be in (0, 1], got {fraction}")
        if rows < 1:
            raise ValueError(f"sketch rows must be >= 1, got {rows}")
        if not 0 < topk <= 1:
            raise ValueError(f"sketch topk must be in (0, 1], got {topk}")
        self.fraction, self.rows, self.topk, self.seed = fraction, rows, topk, seed

    def cols(self, numel: int) -> int:
        return max(1, math.ceil(self.fraction * numel / self.rows))

    def sketched(self, numel: int) -> bool:
        return self.rows * self.cols(numel) < numel

    def kept(self, numel: int) -> int:
        return self.rows * self.cols(numel) if self.sketched(numel) else numel

    def hashes(self, numel: int) -> tuple[Tensor, Tensor]:
        """``(buckets [rows, d], signs [rows, d])`` for a tensor of ``numel`` entries."""
        return _hashes(self.seed, self.rows, self.cols(numel), numel)

    def select(self, x: Tensor, generator: torch.Generator | None) -> tuple[Parts, Tensor]:
        if not self.sketched(x.numel()):
            return {}, x
        buckets, signs = self.hashes(x.numel())
        cols = self.cols(x.numel())
        flat = (buckets + cols * torch.arange(self.rows)[:, None]).reshape(-1)
        table = torch.zeros(self.rows * cols).index_add_(0, flat, (signs * x).reshape(-1))
        return {}, table

    def expand(self, parts: Parts, values: Tensor, numel: int) -> Tensor:
        if not self.sketched(numel):
            return values
        buckets, signs = self.hashes(numel)
        table = values.reshape(self.rows, -1)
        estimate = (table.gather(1, buckets) * signs).median(dim=0).values
        k = min(numel, max(1, math.ceil(self.topk * numel)))
        idx = estimate.abs().topk(k).indices
        out = torch.zeros(numel)
        out[idx] = estimate[idx]
        return out


@functools.lru_cache(maxsize=64)
def _hashes(seed: int, rows: int, cols: int, numel: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + numel)
    buckets = torch.randint(0, cols, (rows, numel), generator=g)
    signs = torch.randint(0, 2, (rows, numel), generator=g).float() * 2 - 1
    return buckets, signs
