"""The wire format: a small fixed frame around a safetensors archive. A payload can never execute code.

Layout (little endian, 28-byte frame header, then the body)::

    magic    4s  b"FMTL"
    version  u8  WIRE_VERSION
    codec    u8  lossless byte codec of the body: 0 none, 1 zstd, 2 lz4
    reserved u16 0
    raw_len  u64 body length after lossless decompression (a safetensors archive)
    body_len u64 body length as sent
    crc32    u32 CRC-32 of the 24 header bytes before it and of the body

The safetensors archive carries a JSON header under metadata key ``"fedmtl"`` (the codec chain and,
per tensor, its name, shape and dtype), so a payload describes itself. Tensors are parsed by
safetensors (never pickle). The CRC detects corruption in transit; it is not authentication (use TLS
or secure aggregation for that).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from fedmtl.tree import unshared

MAGIC = b"FMTL"
WIRE_VERSION = 1
_FRAME = struct.Struct("<4sBBHQQI")
FRAME_BYTES = _FRAME.size
_META_KEY = "fedmtl"


class PayloadError(ValueError):
    """A payload that cannot be accepted; the message says why."""


def tensors_to_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise named tensors (moved to CPU, made contiguous, aliases copied) as a bare safetensors archive."""
    return st_save(unshared({k: v.detach().cpu() for k, v in tensors.items()}), metadata=dict(metadata or {}))


def bytes_to_tensors(data: bytes) -> dict[str, Tensor]:
    """Parse bytes written by :func:`tensors_to_bytes`; malformed bytes raise :class:`PayloadError`."""
    try:
        return dict(st_load(bytes(data)))
    except Exception as exc:  # safetensors raises several exception types for bad input
        raise PayloadError(f"payload is not a valid tensor archive ({type(exc).__name__}: {exc})") from None


def pack(tensors: Mapping[str, Tensor], header: Mapping[str, Any], byte_codec: Any = None) -> bytes:
    """Frame ``tensors`` and a JSON-able ``header`` into one payload.

    Args:
        tensors: named tensors (the codec parts).
        header: JSON-serialisable description stored inside the archive.
        byte_codec: optional lossless codec with ``wire_id`` and ``compress``.

    Returns:
        The exact bytes that go on the wire.
    """
    raw = tensors_to_bytes(tensors, {_META_KEY: json.dumps(header, separators=(",", ":"))})
    body = byte_codec.compress(raw) if byte_codec is not None else raw
    codec_id = byte_codec.wire_id if byte_codec is not None else 0
    head = _FRAME.pack(MAGIC, WIRE_VERSION, codec_id, 0, len(raw), len(body), 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def unpack(
    data: bytes, byte_codecs: Mapping[int, Any] | None = None, max_bytes: int = 1 << 30
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Check and parse a payload written by :func:`pack`.

    Args:
        data: the received bytes.
        byte_codecs: ``wire_id -> codec`` this receiver accepts besides 0 (none).
        max_bytes: limit on both the received and the decompressed size.

    Returns:
        ``(header, tensors)``.

    Raises:
        PayloadError: truncated, oversized, wrong magic or version, checksum mismatch, unknown or
            unexpected byte codec, or a body that is not a valid archive; the message names which.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < FRAME_BYTES:
        raise PayloadError(
            f"truncated payload: {len(data)} bytes, the frame header alone needs {FRAME_BYTES}"
        )
    magic, version, codec_id, _, raw_len, body_len, crc = _FRAME.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"not a fedmtl payload (magic {magic!r}, expected {MAGIC!r})")
    if version != WIRE_VERSION:
        raise PayloadError(f"unsupported wire version {version} (this build reads version {WIRE_VERSION})")
    if len(data) > max_bytes or raw_len > max_bytes:
        raise PayloadError(
            f"oversized payload: {len(data)} bytes sent, {raw_len} declared raw, limit {max_bytes} bytes"
        )
    body = data[FRAME_BYTES:]
    if len(body) < body_len:
        raise PayloadError(f"truncated payload: body has {len(body)} bytes, header declares {body_len}")
    if len(body) > body_len:
        raise PayloadError(f"payload has {len(body) - body_len} trailing bytes after the declared body")
    if zlib.crc32(body, zlib.crc32(data[: FRAME_BYTES - 4])) != crc:
        raise PayloadError("checksum mismatch: payload corrupted in transit")
    if codec_id == 0:
        raw = body
    elif byte_codecs and codec_id in byte_codecs:
        raw = byte_codecs[codec_id].decompress(body, raw_len)
    else:
        raise PayloadError(f"payload body uses byte codec id {codec_id}, which this link does not accept")
    if len(raw) != raw_len:
        raise PayloadError(f"body is {len(raw)} bytes, header declares {raw_len}")
    try:
        meta = _metadata(raw)
        header = json.loads(meta[_META_KEY])
    except PayloadError:
        raise
    except Exception as exc:
        raise PayloadError(f"payload header is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    return header, bytes_to_tensors(raw)


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors archive, read from its JSON header without loading tensors."""
    if len(raw) < 8:
        raise PayloadError(f"body too short for a tensor archive ({len(raw)} bytes)")
    (n,) = struct.unpack_from("<Q", raw)
    if n > len(raw) - 8:
        raise PayloadError(f"tensor archive header claims {n} bytes, only {len(raw) - 8} present")
    meta = json.loads(raw[8 : 8 + n]).get("__metadata__")
    if not isinstance(meta, dict) or _META_KEY not in meta:
        raise PayloadError("tensor archive lacks the fedmtl header")
    return meta
