"""A link: one direction of communication (uplink or downlink) with its codec chain.

``encode`` turns named tensors into the exact bytes that would go on the wire and returns the
sender's next codec state; ``decode`` turns bytes back into tensors or raises
:class:`~fedmtl.comm.wire.PayloadError`. Byte accounting is ``len()`` of those bytes, nothing estimated.

Error feedback (Seide et al., 2014; Stich et al., 2018; Karimireddy et al., 2019) is a property of the
whole chain, switched on by ``error_feedback: true`` on a top-k, random-k or sign codec: the sender
adds its residual ``e`` to the tensor before compressing and keeps ``e' = (x + e) - decode(encode(x + e))``
in its state, so what was transmitted plus what remains always equals the true cumulative update.
The state is an explicit tensor tree ``{"residual": {name: tensor}}``; the link itself holds none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from fedmtl import registry
from fedmtl.comm.codecs import build_codec
from fedmtl.comm.wire import PayloadError, pack, unpack
from fedmtl.config import comm as comm_cfg
from fedmtl.tree import TensorTree

_FLOATS = {str(d): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
_OTHERS = {str(d): d for d in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}

#: what a receiver accepts under one name: a shape (any floating dtype), or a tensor (a ``meta`` one will
#: do) whose shape and dtype the declared tensor must have
Spec = torch.Size | Tensor
#: name -> spec, or a function answering the spec of a name (``None``: not accepted)
Expected = Mapping[str, Spec] | Callable[[str], Spec | None]
#: the most bytes one coordinate takes in any chain's parts (top-k: int32 index + float32 value; raw int64)
BYTES_PER_ENTRY = 8
#: per declared tensor: its parts' safetensors entries and its entry in the JSON header, besides its name
BYTES_PER_TENSOR = 1024


class Link:
    """A codec chain ``[sparsifier] -> [quantiser] -> [byte codec]`` with framing and validation.

    Args:
        codecs: codec configs in encoding order (default: identity float32).
        max_payload_bytes: payloads (sent or decompressed) larger than this are rejected.
        role: a label written into every payload's header and required on decoding (``"delta"`` for
            the downlink's model differences), so payloads of two links never pass for each other.
    """

    def __init__(
        self, codecs: list[comm_cfg.Codec] | None = None, max_payload_bytes: int = 1 << 30, role: str = ""
    ):
        self.codecs = list(codecs) if codecs else [comm_cfg.IdentityCodec()]
        comm_cfg.check_chain([c.name for c in self.codecs])
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
        self.max_payload_bytes = int(max_payload_bytes)
        self.sparsifier: Any = None
        self.quantiser: Any = build_codec(comm_cfg.IdentityCodec())
        self.byte_codec: Any = None
        for c in self.codecs:
            stage = registry.get("codec", c.name).traits["stage"]
            setattr(self, {"sparsifier": "sparsifier", "quantiser": "quantiser", "byte": "byte_codec"}[stage], build_codec(c))
        self.error_feedback = any(getattr(c, "error_feedback", False) for c in self.codecs)
        #: codecs with per-tensor sender memory (DGC's momentum, PowerSGD's warm-start Q): ``prepare`` /
        #: ``after`` hooks around the encoding, memory kept in the state under ``"memory"``
        self.memory_codecs: list[Any] = [c for c in (self.sparsifier, self.quantiser) if getattr(c, "stateful", False)]
        self._chain_spec = [c.model_dump(mode="json") for c in self.codecs]
        if role:
            self._chain_spec = [{"role": role}, *self._chain_spec]

    def __repr__(self) -> str:
        return f"Link({[c.name for c in self.codecs]}, error_feedback={self.error_feedback})"

    @property
    def chain_spec(self) -> list[dict[str, Any]]:
        """The chain (and role) as every payload's header names it (a receiver refuses any other)."""
        return [dict(c) for c in self._chain_spec]

    @property
    def stateful(self) -> bool:
        """Whether senders must keep codec state between rounds (error feedback)."""
        return self.error_feedback or bool(self.memory_codecs)

    @property
    def stochastic(self) -> bool:
        """Whether ``encode`` draws from its generator (it then requires one)."""
        return bool(getattr(self.sparsifier, "stochastic", False) or self.quantiser.stochastic)

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        tensors: Mapping[str, Tensor],
        state: TensorTree | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[bytes, TensorTree]:
        """Compress and frame ``tensors``.

        Args:
            tensors: name -> tensor (any shape; non-empty floating tensors go through the chain, others are sent raw).
            state: the sender's codec state from its previous call (``{}`` at first); not mutated.
            generator: the only source of randomness for stochastic codecs (required by qsgd and randk).

        Returns:
            ``(payload, next_state)``; ``len(payload)`` is the exact number of bytes on the wire.
        """
        residuals = dict(cast(dict[str, Tensor], (state or {}).get("residual", {})))
        memory = dict(cast(dict[str, Any], (state or {}).get("memory", {})))
        parts: dict[str, Tensor] = {}
        meta: list[list[Any]] = []
        for i, (name, t) in enumerate(tensors.items()):
            t = t.detach().cpu()
            meta.append([name, list(t.shape), str(t.dtype)])
            if not t.is_floating_point() or t.numel() == 0:  # integers, flags and empty tensors go raw
                parts[f"{i}.raw"] = t.contiguous()
                continue
            x = t.float().reshape(-1)
            mem = dict(memory.get(name, {}))
            for c in self.memory_codecs:
                if hasattr(c, "prepare"):
                    x, mem = c.prepare(x, mem)
            if self.error_feedback and name in residuals:
                r = residuals[name]
                if r.shape != x.shape:
                    raise ValueError(
                        f"codec state residual for {name!r} has {r.numel()} entries, tensor {x.numel()}"
                    )
                x = x + r
            tparts = self._encode_one(x, tuple(t.shape), generator, mem)
            if self.error_feedback:
                residuals[name] = x - self._decode_one(tparts, tuple(t.shape)).reshape(-1)
            for c in self.memory_codecs:
                mem = c.after(mem, tparts)
            if self.memory_codecs:
                memory[name] = mem
            # a part whose name starts with "_" is sender-side memory for ``after`` (PowerSGD's exact Q), never sent
            parts.update({f"{i}.{k}": v for k, v in tparts.items() if not k.startswith("_")})
        header = {"chain": self._chain_spec, "tensors": meta}
        data = pack(parts, header, self.byte_codec)
        new_state: TensorTree = {"residual": cast(TensorTree, residuals)} if self.error_feedback else {}
        if self.memory_codecs:
            new_state["memory"] = memory
        return data, new_state

    def _encode_one(
        self,
        x: Tensor,
        shape: tuple[int, ...],
        g: torch.Generator | None,
        memory: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        mem = {"memory": memory or {}}
        out: dict[str, Tensor]
        if self.sparsifier is not None:
            out, values = self.sparsifier.select(
                x, g, **(mem if self.sparsifier in self.memory_codecs else {})
            )
        else:
            out, values = {}, x
        out.update(
            self.quantiser.encode(values, shape, g, **(mem if self.quantiser in self.memory_codecs else {}))
        )
        return out

    def _decode_one(self, parts: Mapping[str, Tensor], shape: tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        n = numel
        if self.sparsifier is not None:  # a sparsifier whose k varies (DGC's warm-up) reads it from the parts
            count = getattr(self.sparsifier, "count", None)
            n = count(parts, numel) if count is not None else self.sparsifier.kept(numel)
        values = self.quantiser.decode(dict(parts), n, shape)
        if self.sparsifier is not None:
            values = self.sparsifier.expand(dict(parts), values, numel)
        decoded: Tensor = values.reshape(shape)
        return decoded

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        data: bytes,
        expected: Expected | None = None,
        *,
        max_numel: int | None = None,
        max_tensors: int | None = None,
    ) -> dict[str, Tensor]:
        """Tensors from bytes, fully validated; what it allocates is bounded by ``expected`` before anything
        is decompressed or decoded.

        Args:
            data: a payload from :meth:`encode` of a link with the same chain.
            expected: name -> spec the receiver accepts (a shape, or a tensor whose shape and dtype must
                match), or a function answering the spec of a name (``None``: not accepted); any other name,
                shape or dtype is rejected (names may be missing: a client sends only what it trained).
                ``None`` (a trusted sender only) bounds a payload by ``max_payload_bytes`` alone.
            max_numel: the most entries all tensors may declare together (default: the sum of a mapping's
                shapes; required with a function).
            max_tensors: the most tensors a payload may declare (default: a mapping's length; required
                with a function).

        Raises:
            PayloadError: with the reason (truncated, checksum, version, oversized, chain mismatch, unknown
                tensor, wrong shape or dtype, malformed part, NaN/Inf).
        """
        bound = self._receiver_bound(expected, max_numel, max_tensors)
        limit = bound.raw_bytes if bound is not None else self.max_payload_bytes
        byte_codecs = {self.byte_codec.wire_id: self.byte_codec} if self.byte_codec is not None else {}
        header, parts = unpack(data, byte_codecs, limit)
        if header.get("chain") != self._chain_spec:
            raise PayloadError(
                f"payload was encoded with codec chain {header.get('chain')}, this link expects {self._chain_spec}"
            )
        meta = _check_tensor_list(header.get("tensors"), self.max_payload_bytes)
        if bound is not None:
            check_declared(meta, bound)
        allowed = set(self.quantiser.part_names) | set(getattr(self.sparsifier, "part_names", ()))
        by_tensor: dict[str, dict[str, Tensor]] = {}
        indices = {str(i) for i in range(len(meta))}
        for key, value in parts.items():
            index, dot, part = key.partition(".")
            if not dot or index not in indices:
                raise PayloadError(f"payload part {key[:40]!r} belongs to no declared tensor")
            by_tensor.setdefault(index, {})[part] = value
        out: dict[str, Tensor] = {}
        for i, (name, shape, dtype) in enumerate(meta):
            mine = by_tensor.get(str(i), {})
            try:
                if dtype in _OTHERS or math.prod(shape) == 0:
                    if (
                        set(mine) != {"raw"}
                        or mine["raw"].dtype != (_OTHERS | _FLOATS)[dtype]
                        or list(mine["raw"].shape) != shape
                    ):
                        raise PayloadError(f"raw {dtype} part missing or malformed")
                    out[name] = mine["raw"]
                    continue
                if set(mine) != allowed:
                    raise PayloadError(f"parts {sorted(mine)}, expected {sorted(allowed)}")
                out[name] = self._decode_one(mine, tuple(shape)).to(_FLOATS[dtype])
            except PayloadError as exc:
                raise PayloadError(f"tensor {name!r}: {exc}") from None
            except (RuntimeError, IndexError, ValueError, OverflowError) as exc:
                raise PayloadError(f"tensor {name!r} does not decode ({type(exc).__name__}: {exc})") from None
            if out[name].is_floating_point() and not bool(torch.isfinite(out[name]).all()):
                raise PayloadError(f"tensor {name!r} carries NaN or Inf")
        return out

    def _receiver_bound(self, expected: Expected | None, max_numel: int | None, max_tensors: int | None) -> Bound | None:
        """What a receiver of ``expected`` accepts (``None``: only ``max_payload_bytes``)."""
        if expected is None:
            return None
        if isinstance(expected, Mapping):
            names_bytes = sum(len(n.encode()) for n in expected)
            max_numel = sum(math.prod(_spec_shape(v)) for v in expected.values()) if max_numel is None else max_numel
            max_tensors = len(expected) if max_tensors is None else max_tensors
            spec_of: Callable[[str], Spec | None] = expected.get
        else:
            if max_numel is None or max_tensors is None:
                raise ValueError("decode with an expected function needs max_numel and max_tensors")
            names_bytes = 256 * max_tensors
            spec_of = expected
        # names are JSON-escaped twice (the fedmtl header is a string inside the archive's JSON header)
        overhead = 4096 + 2 * len(json.dumps(self._chain_spec)) + BYTES_PER_TENSOR * max_tensors + 8 * names_bytes
        raw = min(self.max_payload_bytes, BYTES_PER_ENTRY * max_numel + overhead)
        return Bound(spec_of, max_numel, max_tensors, raw)


@dataclass(frozen=True)
class Bound:
    """What a receiver accepts: a spec per name, at most ``max_numel`` entries in at most ``max_tensors``
    tensors, and payloads (sent and decompressed) of at most ``raw_bytes``."""

    spec_of: Callable[[str], Spec | None]
    max_numel: int
    max_tensors: int
    raw_bytes: int


def _spec_shape(spec: Spec) -> tuple[int, ...]:
    return tuple(spec.shape if isinstance(spec, Tensor) else spec)


def check_declared(meta: list[tuple[str, list[int], str]], bound: Bound) -> None:
    """Reject, from the header alone (before anything is decoded), a declared tensor the receiver does not
    expect: an unknown name, another shape or dtype, or more tensors or entries than it accepts."""
    unknown = [name[:80] for name, _, _ in meta if bound.spec_of(name) is None]
    if unknown:
        raise PayloadError(f"payload has unknown tensors {unknown[:5]}")
    if len(meta) > bound.max_tensors:
        raise PayloadError(f"payload declares {len(meta)} tensors, at most {bound.max_tensors} are expected")
    total = 0
    for name, shape, dtype in meta:
        spec = cast(Spec, bound.spec_of(name))
        if tuple(shape) != _spec_shape(spec):
            raise PayloadError(f"tensor {name!r} has shape {shape}, expected {list(_spec_shape(spec))}")
        want = str(spec.dtype) if isinstance(spec, Tensor) else None
        if (want is not None and dtype != want) or (want is None and dtype not in _FLOATS):
            raise PayloadError(f"tensor {name!r} has dtype {dtype}, expected {want or 'a floating dtype'}")
        total += math.prod(shape)
        if total > bound.max_numel:
            raise PayloadError(f"payload declares more than the {bound.max_numel} entries expected")


def _check_tensor_list(meta: Any, max_bytes: int) -> list[tuple[str, list[int], str]]:
    """The header's tensor list, checked: unique names, non-negative shapes, known dtypes, bounded size
    (what the decoded tensors would take, at least float32's 4 bytes an entry, within ``max_bytes``)."""
    if not isinstance(meta, list):
        raise PayloadError("payload header lacks its tensor list")
    out, seen, total = [], set(), 0
    for entry in meta:
        ok = (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
        )
        if (
            not ok
            or not all(isinstance(d, int) and d >= 0 for d in entry[1])
            or entry[2] not in (_FLOATS | _OTHERS)
        ):
            raise PayloadError(f"malformed tensor entry in header: {str(entry)[:80]}")
        if entry[0] in seen:
            raise PayloadError(f"tensor {entry[0]!r} declared twice")
        seen.add(entry[0])
        total += math.prod(entry[1]) * max(4, (_FLOATS | _OTHERS)[entry[2]].itemsize)
        if total > max_bytes:
            raise PayloadError(f"oversized payload: declared tensors exceed the {max_bytes}-byte limit")
        out.append((entry[0], entry[1], entry[2]))
    return out


def check_shapes(tensors: Mapping[str, Any], expected: Mapping[str, torch.Size], values: bool = True) -> None:
    """Reject unknown names and wrong shapes (and, for tensors when ``values``, non-finite entries)."""
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise PayloadError(f"payload has unknown tensors {unknown[:5]}")
    for name, t in tensors.items():
        shape = t if isinstance(t, torch.Size) else t.shape
        if tuple(shape) != tuple(expected[name]):
            raise PayloadError(f"tensor {name!r} has shape {list(shape)}, expected {list(expected[name])}")
        if values and isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PayloadError(f"tensor {name!r} carries NaN or Inf")


def build_link(codecs: list[comm_cfg.Codec] | None = None, max_payload_bytes: int = 1 << 30) -> Link:
    """The link a ``comm.uplink`` / ``comm.downlink`` chain describes.

    Args:
        codecs: codec configs in encoding order.
        max_payload_bytes: rejection limit for received payloads (``CommConfig.max_payload_mb`` * 2**20).
    """
    return Link(codecs, max_payload_bytes)


def build_links(cfg: comm_cfg.CommConfig) -> tuple[Link, Link]:
    """``(uplink, downlink)`` of a ``comm`` config, with its payload limit."""
    limit = int(cfg.max_payload_mb * 2**20)
    return Link(cfg.uplink, limit), Link(cfg.downlink, limit)
