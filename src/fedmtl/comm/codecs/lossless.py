"""Lossless byte codecs for the end of a chain; decompression is bounded by the declared size."""

from __future__ import annotations

import io

import lz4.block
import zstandard

from fedmtl.comm.wire import PayloadError


class Zstd:
    """Zstandard (RFC 8878) at ``level`` 1..22."""

    wire_id = 1

    def __init__(self, level: int = 3):
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {level}")
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def decompress(self, data: bytes, raw_size: int) -> bytes:
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(raw_size + 1)  # never more than declared (+1 to detect overrun)
        except zstandard.ZstdError as exc:
            raise PayloadError(f"zstd body does not decompress ({exc})") from None
        if len(out) != raw_size:
            raise PayloadError(f"zstd body decompresses to {len(out)}+ bytes, header declares {raw_size}")
        return out


class LZ4:
    """LZ4 block format (the size travels in the frame header)."""

    wire_id = 2

    def compress(self, data: bytes) -> bytes:
        return lz4.block.compress(data, store_size=False)

    def decompress(self, data: bytes, raw_size: int) -> bytes:
        try:
            out = lz4.block.decompress(data, uncompressed_size=raw_size)
        except lz4.block.LZ4BlockError as exc:
            raise PayloadError(f"lz4 body does not decompress ({exc})") from None
        if len(out) != raw_size:
            raise PayloadError(f"lz4 body decompresses to {len(out)} bytes, header declares {raw_size}")
        return out
