"""Configuration of what travels between server and clients: codec chains per direction.

A chain is written left to right in encoding order and has up to three stages, in this order:

1. a *sparsifier* (``topk`` or ``randk``): keeps a subset of coordinates;
2. a *quantiser* (``identity``, ``fp16``, ``bf16``, ``int8``, ``qsgd`` or ``sign``): encodes the values;
3. a *lossless byte codec* (``zstd`` or ``lz4``): compresses the serialised payload.

Each stage is optional and appears at most once, e.g.
``[{name: topk, fraction: 0.01}, {name: int8}, {name: zstd, level: 3}]``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from fedmtl.config.base import Size, StrictModel


class IdentityCodec(StrictModel):
    """float32, unchanged."""

    name: Literal["identity"] = "identity"


class FP16Codec(StrictModel):
    """IEEE half precision (values beyond +-65504 are clamped)."""

    name: Literal["fp16"] = "fp16"


class BF16Codec(StrictModel):
    """bfloat16: float32's range, 8 bits of mantissa."""

    name: Literal["bf16"] = "bf16"


class Int8Codec(StrictModel):
    """Symmetric uniform 8-bit quantisation with a float32 scale per tensor or per output channel."""

    name: Literal["int8"] = "int8"
    per_channel: bool = Field(
        default=False, description="One scale per row (dim 0) of tensors with >= 2 dims."
    )


class QSGDCodec(StrictModel):
    """QSGD stochastic quantisation to ``levels`` levels per sign, unbiased (Alistarh et al., 2017)."""

    name: Literal["qsgd"] = "qsgd"
    levels: int = Field(default=16, ge=1, le=32767, description="Quantisation levels s (per sign).")
    bucket_size: Size = Field(default=512, description="Coordinates sharing one norm.")


class SignCodec(StrictModel):
    """Scaled sign: one bit per coordinate times the mean magnitude (EF-signSGD, Karimireddy et al., 2019)."""

    name: Literal["sign"] = "sign"
    error_feedback: bool = True


class TopKCodec(StrictModel):
    """Keep the ``fraction`` largest-magnitude coordinates of each tensor (Stich et al., 2018)."""

    name: Literal["topk"] = "topk"
    fraction: float = Field(default=0.01, gt=0, le=1)
    error_feedback: bool = True


class RandKCodec(StrictModel):
    """Keep a random ``fraction`` of each tensor's coordinates; only a seed travels for the indices."""

    name: Literal["randk"] = "randk"
    fraction: float = Field(default=0.01, gt=0, le=1)
    error_feedback: bool = True


class ZstdCodec(StrictModel):
    """Lossless Zstandard compression of the serialised payload."""

    name: Literal["zstd"] = "zstd"
    level: int = Field(default=3, ge=1, le=22)


class LZ4Codec(StrictModel):
    """Lossless LZ4 block compression of the serialised payload."""

    name: Literal["lz4"] = "lz4"


Codec = Annotated[
    IdentityCodec
    | FP16Codec
    | BF16Codec
    | Int8Codec
    | QSGDCodec
    | SignCodec
    | TopKCodec
    | RandKCodec
    | ZstdCodec
    | LZ4Codec,
    Field(discriminator="name"),
]

SPARSIFIERS = frozenset({"topk", "randk"})
QUANTISERS = frozenset({"identity", "fp16", "bf16", "int8", "qsgd", "sign"})
BYTE_CODECS = frozenset({"zstd", "lz4"})
UPDATE_ONLY = frozenset({"topk", "randk", "sign"})  # meaningful for updates (with error feedback) only
_STAGE = {**{n: 0 for n in SPARSIFIERS}, **{n: 1 for n in QUANTISERS}, **{n: 2 for n in BYTE_CODECS}}
_STAGE_NAME = (
    "sparsifier (topk, randk)",
    "quantiser (identity, fp16, bf16, int8, qsgd, sign)",
    "byte codec (zstd, lz4)",
)


def check_chain(names: list[str]) -> None:
    """Raise ``ValueError`` unless ``names`` is a valid chain: sparsifier, quantiser, byte codec, each optional.

    Args:
        names: codec names in encoding order.
    """
    last = -1
    for i, name in enumerate(names):
        if name not in _STAGE:
            raise ValueError(f"unknown codec {name!r} at position {i}")
        stage = _STAGE[name]
        if stage == last:
            raise ValueError(
                f"codec chain {names} has two {_STAGE_NAME[stage]} stages ({names[i - 1]!r} and {name!r}); "
                "use at most one of each"
            )
        if stage < last:
            raise ValueError(
                f"codec chain {names}: {name!r} (a {_STAGE_NAME[stage]}) cannot follow {names[i - 1]!r} "
                f"(a {_STAGE_NAME[last]}); order is sparsifier -> quantiser -> byte codec"
            )
        last = stage


class CommConfig(StrictModel):
    """Codec chains, applied left to right when encoding (right to left when decoding)."""

    uplink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])  # type: ignore[arg-type]
    downlink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])  # type: ignore[arg-type]
    max_payload_mb: float = Field(
        default=1024.0, gt=0, description="Payloads larger than this (compressed or not) are rejected."
    )

    @field_validator("uplink", "downlink")
    @classmethod
    def _valid_chain(cls, chain: list[Codec]) -> list[Codec]:
        check_chain([c.name for c in chain])
        return chain

    @field_validator("downlink")
    @classmethod
    def _downlink_sends_parameters(cls, chain: list[Codec]) -> list[Codec]:
        update_only = [c.name for c in chain if c.name in UPDATE_ONLY]
        if update_only:
            raise ValueError(
                f"comm.downlink carries the global parameters, not updates: {update_only} would zero or "
                "binarise weights; use fp16, bf16, int8, qsgd and/or zstd/lz4 on the downlink"
            )
        return chain
