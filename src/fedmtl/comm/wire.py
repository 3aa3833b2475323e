"""Tensors to bytes and back, through safetensors: a payload can never execute code.

This is the minimal wire format of the foundation; the communication layer builds its versioned,
checksummed format on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor


class PayloadError(ValueError):
    """A payload that cannot be accepted; the message says why."""


def tensors_to_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise named tensors (made contiguous, moved to CPU)."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {}))


def bytes_to_tensors(data: bytes) -> dict[str, Tensor]:
    """Parse bytes written by :func:`tensors_to_bytes`; malformed bytes raise :class:`PayloadError`."""
    try:
        return dict(st_load(data))
    except Exception as exc:  # safetensors raises several exception types for bad input
        raise PayloadError(f"payload is not a valid tensor archive ({type(exc).__name__}: {exc})") from None
