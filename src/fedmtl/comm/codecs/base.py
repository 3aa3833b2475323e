"""The three codec roles of a chain and the helpers they share.

A chain is ``[sparsifier] -> [quantiser] -> [byte codec]`` (each stage optional):

* a :class:`Sparsifier` picks coordinates of a flat float32 vector and returns index parts plus the
  kept values;
* a :class:`Quantiser` turns a flat float32 vector into named tensors ("parts") and back;
* a :class:`ByteCodec` compresses the serialised payload losslessly.

Codecs are stateless and pure: all randomness comes from the ``torch.Generator`` passed in and all
sender state (error-feedback residuals) lives in the link's explicit state tree, never on a codec.
Decoders validate every part they read and raise :class:`~fedmtl.comm.wire.PayloadError`.

Optional hooks (duck-typed, so the protocols stay small):

* ``stateful = True``: the codec keeps per-tensor sender memory (a dict of tensors the link stores
  under ``state["memory"][name]``); ``select`` / ``encode`` then take ``memory=``, and the link calls
  ``prepare(x, memory) -> (x, memory)`` (if defined) before error feedback and
  ``after(memory, parts) -> memory`` once the tensor is encoded (DGC's momentum, PowerSGD's ``Q``);
* ``count(parts, numel) -> k``: a sparsifier whose ``k`` varies between payloads (DGC's warm-up)
  tells the receiver how many values to decode, checked against its bounds.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from fedmtl.comm.wire import PayloadError

Parts = dict[str, Tensor]


class Quantiser(Protocol):
    """Encodes the values of one tensor (flat float32, ``n`` entries) into parts."""

    part_names: tuple[str, ...]
    stochastic: bool

    def encode(self, values: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Parts: ...

    def decode(self, parts: Parts, n: int, shape: tuple[int, ...]) -> Tensor: ...


class Sparsifier(Protocol):
    """Keeps ``kept(numel)`` coordinates of a flat float32 vector."""

    part_names: tuple[str, ...]
    stochastic: bool

    def kept(self, numel: int) -> int: ...

    def select(self, x: Tensor, generator: torch.Generator | None) -> tuple[Parts, Tensor]: ...

    def expand(self, parts: Parts, values: Tensor, numel: int) -> Tensor: ...


class ByteCodec(Protocol):
    """Lossless bytes -> bytes; ``decompress`` must never produce more than ``raw_size`` bytes."""

    wire_id: int

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, raw_size: int) -> bytes: ...


def take(parts: Parts, key: str, dtype: torch.dtype, numel: int | None = None) -> Tensor:
    """``parts[key]`` as a flat tensor, checked for presence, dtype and (optionally) size."""
    if key not in parts:
        raise PayloadError(f"missing part {key!r}")
    t = parts[key]
    if t.dtype != dtype:
        raise PayloadError(f"part {key!r} has dtype {t.dtype}, expected {dtype}")
    t = t.reshape(-1)
    if numel is not None and t.numel() != numel:
        raise PayloadError(f"part {key!r} has {t.numel()} entries, expected {numel}")
    return t


def need_generator(name: str, generator: torch.Generator | None) -> torch.Generator:
    """Stochastic codecs draw only from the generator the caller passes."""
    if generator is None:
        raise ValueError(f"codec {name!r} is stochastic: pass a torch.Generator to encode()")
    return generator
