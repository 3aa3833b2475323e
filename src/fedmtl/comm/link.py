"""A link: one direction of communication (uplink or downlink) with its codec chain.

``encode`` turns named tensors into the exact bytes that would go on the wire and returns the
sender's next codec state (error-feedback residuals live there); ``decode`` turns bytes back into
tensors. Byte accounting is ``len()`` of those bytes, nothing estimated.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.comm.wire import PayloadError, bytes_to_tensors, tensors_to_bytes
from fedmtl.config import comm as comm_cfg
from fedmtl.tree import TensorTree


class Link:
    """Identity (float32) link: the foundation's codec chain."""

    def __init__(self, codecs: list[comm_cfg.Codec] | None = None):
        self.codecs = list(codecs or [comm_cfg.IdentityCodec()])
        for c in self.codecs:
            if not isinstance(c, comm_cfg.IdentityCodec):
                raise ValueError(f"codec {c.name!r} is not available in this link")

    @property
    def stateful(self) -> bool:
        """Whether senders must keep codec state between rounds (error feedback)."""
        return False

    def encode(
        self, tensors: Mapping[str, Tensor], state: TensorTree | None = None, generator: torch.Generator | None = None
    ) -> tuple[bytes, TensorTree]:
        return tensors_to_bytes({k: v.float() for k, v in tensors.items()}), dict(state or {})

    def decode(self, data: bytes, expected: Mapping[str, torch.Size] | None = None) -> dict[str, Tensor]:
        """Tensors from bytes; with ``expected``, names and shapes must match it or :class:`PayloadError` says which."""
        out = bytes_to_tensors(data)
        if expected is not None:
            check_shapes(out, expected)
        return out


def check_shapes(tensors: Mapping[str, Tensor], expected: Mapping[str, torch.Size]) -> None:
    """Reject unknown names, wrong shapes and non-finite values."""
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise PayloadError(f"payload has unknown tensors {unknown[:5]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name]):
            raise PayloadError(f"tensor {name!r} has shape {list(t.shape)}, expected {list(expected[name])}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PayloadError(f"tensor {name!r} carries NaN or Inf")


def build_link(codecs: list[comm_cfg.Codec]) -> Link:
    return Link(codecs)
