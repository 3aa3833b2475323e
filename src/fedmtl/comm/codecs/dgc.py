"""Deep Gradient Compression's top-k: momentum correction, momentum-factor masking and a sparsity
warm-up (Lin, Han, Mao, Wang & Dally, 2018, "Deep Gradient Compression: Reducing the Communication
Bandwidth for Distributed Training", ICLR, Sections 3.1-3.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedmtl.comm.codecs.base import Parts, take
from fedmtl.comm.wire import PayloadError

#: DGC's warm-up: the kept fraction shrinks exponentially, 25 %, 6.25 %, 1.5625 %, ... (Section 3.3)
WARMUP_BASE = 0.25
#: bit weights of one byte of a mask, most significant first (numpy's ``packbits`` order)
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)


def pack_mask(mask: Tensor) -> Tensor:
    """A bool vector as uint8 bytes, 8 entries a byte, most significant bit first, the last byte zero-padded."""
    pad = (-mask.numel()) % 8
    bits = torch.cat([mask.to(torch.int32), mask.new_zeros(pad, dtype=torch.int32)]).reshape(-1, 8)
    return (bits * _BITS).sum(1).to(torch.uint8)


def unpack_mask(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_mask`; the padding bits must be zero.

    Raises:
        PayloadError: ``packed`` does not hold ``ceil(numel / 8)`` bytes, or a padding bit is set.
    """
    packed = take({"mask": packed}, "mask", torch.uint8, -(-numel // 8))
    bits = (packed.to(torch.int32).unsqueeze(1) & _BITS).ne(0).reshape(-1)
    if bool(bits[numel:].any()):
        raise PayloadError("dgc mask sets bits beyond the tensor's entries")
    return bits[:numel]


class DGCTopK:
    """Top-k of the momentum-corrected accumulation, sent as the kept values and their sorted indices,
    gap-coded (the first index, then each index minus the one before it, int32) so that a byte codec
    after the chain packs them into about one byte each.

    Per tensor the sender keeps (in the link's explicit state, never on the codec) the momentum ``u``
    and the number of updates it has sent. Each update ``x`` (a client's model difference here) goes

    * ``u <- m u + x`` (momentum correction, eq. 5); the link's error feedback then accumulates
      ``v <- v + u`` and sends ``top-k(v)``, keeping the rest of ``v`` as its residual;
    * ``u`` is zeroed where coordinates were sent (momentum-factor masking, Section 3.2);
    * the kept fraction during the first ``warmup`` updates is ``max(fraction, 0.25**(t+1))``
      (t = 0, 1, ...), then ``fraction`` (warm-up training, Section 3.3).

    ``index_coding="bitmap"`` sends a bit per coordinate instead of the gaps (``ceil(numel / 8)`` bytes): fewer
    bytes after zstd once more than a few percent are kept (at 20 % about 4.4 kB instead of 5.7 kB for 47,000
    entries, near the 4.2 kB entropy of the mask), the same coordinates and values.

    ``momentum=0`` gives top-k with error feedback and the warm-up only. DGC's local gradient
    clipping belongs to the local optimiser and is not part of this codec. The receiver reads ``k``
    from the payload (at most ``numel``, at least ``ceil(fraction * numel)``).
    """

    stochastic = False
    stateful = True

    def __init__(self, fraction: float = 0.01, momentum: float = 0.9, warmup: int = 4, index_coding: str = "gaps"):
        if not 0 < fraction <= 1:
            raise ValueError(f"dgc fraction must be in (0, 1], got {fraction}")
        if not 0 <= momentum < 1:
            raise ValueError(f"dgc momentum must be in [0, 1), got {momentum}")
        if warmup < 0:
            raise ValueError(f"dgc warmup must be >= 0, got {warmup}")
        if index_coding not in ("gaps", "bitmap"):
            raise ValueError(f"dgc index_coding must be 'gaps' or 'bitmap', got {index_coding!r}")
        self.fraction, self.momentum, self.warmup = fraction, momentum, warmup
        self.bitmap = index_coding == "bitmap"
        self.part_names = ("mask",) if self.bitmap else ("indices",)

    def density(self, step: int) -> float:
        """The kept fraction for the sender's ``step``-th update (0-based)."""
        return max(self.fraction, WARMUP_BASE ** (step + 1)) if step < self.warmup else self.fraction

    def kept_at(self, step: int, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.density(step) * numel))) if numel else 0

    def kept(self, numel: int) -> int:
        return self.kept_at(self.warmup, numel)

    def prepare(self, x: Tensor, memory: Parts) -> tuple[Tensor, Parts]:
        u = memory.get("momentum")
        u = x if u is None or u.shape != x.shape else self.momentum * u + x
        return u, {**memory, "momentum": u}

    def select(
        self, x: Tensor, generator: torch.Generator | None, memory: Parts | None = None
    ) -> tuple[Parts, Tensor]:
        step = int(memory["step"]) if memory and "step" in memory else 0
        idx = torch.topk(x.abs(), self.kept_at(step, x.numel()), sorted=False).indices.sort().values
        if self.bitmap:
            mask = torch.zeros(x.numel(), dtype=torch.bool)
            mask[idx] = True
            return {"mask": pack_mask(mask)}, x[idx]
        return {"indices": torch.diff(idx, prepend=idx.new_zeros(1)).to(torch.int32)}, x[idx]

    def _sent(self, parts: Parts, numel: int) -> Tensor:
        """The sent coordinates, ascending, from the sender's own parts."""
        if self.bitmap:
            return unpack_mask(parts["mask"], numel).nonzero().reshape(-1)
        return parts["indices"].long().cumsum(0)

    def after(self, memory: Parts, parts: Parts) -> Parts:
        u = memory["momentum"].clone()
        u[self._sent(parts, u.numel())] = 0.0
        step = int(memory["step"]) + 1 if "step" in memory else 1
        return {**memory, "momentum": u, "step": torch.tensor(step, dtype=torch.int64)}

    def count(self, parts: Parts, numel: int) -> int:
        if self.bitmap:
            k = int(unpack_mask(take(parts, "mask", torch.uint8), numel).sum())
        elif "indices" not in parts:
            raise PayloadError("missing part 'indices'")
        else:
            k = parts["indices"].numel()
        if not self.kept(numel) <= k <= numel:
            raise PayloadError(
                f"dgc sends {k} indices for {numel} entries, allowed {self.kept(numel)}..{numel}"
            )
        return k

    def expand(self, parts: Parts, values: Tensor, numel: int) -> Tensor:
        if self.bitmap:
            mask = unpack_mask(take(parts, "mask", torch.uint8), numel)
            if int(mask.sum()) != values.numel():
                raise PayloadError(f"dgc mask keeps {int(mask.sum())} entries, the payload carries {values.numel()} values")
            out = torch.zeros(numel)
            out[mask] = values
            return out
        gaps = take(parts, "indices", torch.int32, values.numel()).long()
        if gaps.numel() and (int(gaps[0]) < 0 or bool((gaps[1:] < 1).any())):
            raise PayloadError("dgc indices must be strictly increasing (gaps >= 1 after the first index >= 0)")
        idx = gaps.cumsum(0)
        if idx.numel() and int(idx[-1]) >= numel:
            raise PayloadError(f"dgc indices outside [0, {numel})")
        out = torch.zeros(numel)
        out[idx] = values
        return out
