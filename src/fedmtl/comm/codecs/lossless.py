"""Lossless byte codecs for the end of a chain; decompression is bounded by the declared size."""

from __future__ import annotations

import functools
import io

import lz4.block
import zstandard

from fedmtl.comm.wire import PayloadError


class Zstd:
    """Zstandard (RFC 8878) at ``level`` 1..22, optionally primed with fedmtl's header dictionary.

    ``dictionary=1`` primes both sides with :func:`header_dictionary` (version 1), a raw-content
    dictionary of the strings every payload's header repeats (part names, dtypes, codec fields, the
    built-in models' parameter names): it saves about 200 bytes a payload, which matters once a
    compressed update is about a kilobyte. The version travels in the chain, so both sides agree.
    """

    wire_id = 1

    def __init__(self, level: int = 3, dictionary: int = 0):
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {level}")
        if dictionary not in (0, 1):
            raise ValueError(f"zstd dictionary must be 0 (none) or 1, got {dictionary}")
        self.level = level
        self.dict_data = (
            zstandard.ZstdCompressionDict(header_dictionary(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            if dictionary
            else None
        )

    def compress(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=self.level, dict_data=self.dict_data).compress(data)

    def decompress(self, data: bytes, raw_size: int) -> bytes:
        try:
            with zstandard.ZstdDecompressor(dict_data=self.dict_data).stream_reader(
                io.BytesIO(data)
            ) as reader:
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
        out: bytes = lz4.block.compress(data, store_size=False)
        return out

    def decompress(self, data: bytes, raw_size: int) -> bytes:
        try:
            out: bytes = lz4.block.decompress(data, uncompressed_size=raw_size)
        except lz4.block.LZ4BlockError as exc:
            raise PayloadError(f"lz4 body does not decompress ({exc})") from None
        if len(out) != raw_size:
            raise PayloadError(f"lz4 body decompresses to {len(out)} bytes, header declares {raw_size}")
        return out


_PARTS = ("raw", "values", "indices", "seed", "q", "scale", "norms", "levels", "bits", "codes", "p")
_DTYPES = ("F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL")
_CODEC_FIELDS = (
    '\\"name\\":\\"identity\\"}',
    '\\"name\\":\\"fp16\\"}',
    '\\"name\\":\\"int8\\",\\"per_channel\\":false}',
    '\\"name\\":\\"qsgd\\",\\"levels\\":',
    '\\"bucket_size\\":',
    '\\"name\\":\\"sign\\",',
    '\\"name\\":\\"topk\\",\\"fraction\\":',
    '\\"name\\":\\"randk\\",\\"fraction\\":',
    ',\\"error_feedback\\":true}',
    '\\"name\\":\\"dgc\\",\\"fraction\\":',
    ',\\"momentum\\":',
    ',\\"warmup\\":',
    '\\"name\\":\\"sketch\\",\\"fraction\\":',
    ',\\"rows\\":',
    ',\\"topk\\":',
    ',\\"seed\\":',
    '\\"name\\":\\"powersgd\\",\\"rank\\":',
    '\\"name\\":\\"blockq\\",\\"bits\\":',
    ',\\"block_size\\":',
    '{\\"name\\":\\"zstd\\",\\"level\\":',
    ',\\"dictionary\\":1}',
    '{\\"role\\":\\"delta\\"},',
)
_NAMES = (
    "trunk.net.0.weight",
    "trunk.net.0.bias",
    "trunk.net.2.weight",
    "trunk.net.2.bias",
    ".0.weight",
    ".0.bias",
    "heads.",
)


@functools.lru_cache(maxsize=1)
def header_dictionary() -> bytes:
    """Version 1 of the zstd dictionary: the vocabulary of a fedmtl payload's safetensors and JSON headers.

    Frozen: a change needs a new version number (``ZstdCodec.dictionary``), or old payloads stop decoding.
    """
    out = ['{"__metadata__":{"fedmtl":"{\\"chain\\":[{']
    out += _CODEC_FIELDS
    out += ['],\\"tensors\\":[[\\"']
    out += [f'{n}\\",[' for n in _NAMES]
    out += ['],\\"torch.float32\\"],[\\"', '],\\"torch.int64\\"],[\\"', ']]}"},']
    for i in range(24):  # the most common entries last: zstd finds nearer matches cheaper
        for part in reversed(_PARTS):
            for dt in (
                _DTYPES[:1] if part not in ("indices", "levels", "codes", "bits") else ("I32", "I8", "U8")
            ):
                out.append(f'"{i}.{part}":{{"dtype":"{dt}","shape":[')
    out.append('],"data_offsets":[')
    return "".join(out).encode()
