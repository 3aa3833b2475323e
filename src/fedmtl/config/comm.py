"""Configuration of what travels between server and clients: codec chains per direction.

A chain is written left to right in encoding order and has up to three stages, in this order:

1. a *sparsifier* (``topk``, ``randk``, ``dgc`` or ``sketch``): keeps a subset of coordinates (or, for
   ``sketch``, a count sketch of them);
2. a *quantiser* (``identity``, ``fp16``, ``bf16``, ``int8``, ``qsgd``, ``sign``, ``powersgd`` or
   ``blockq``): encodes the values;
3. a *lossless byte codec* (``zstd`` or ``lz4``): compresses the serialised payload.

Each stage is optional and appears at most once, e.g.
``[{name: topk, fraction: 0.01}, {name: int8}, {name: zstd, level: 3}]``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from fedmtl import registry
from fedmtl.config.base import Size, StrictModel, Width
from fedmtl.config.registered import ComponentConfig, Registered


class IdentityCodec(ComponentConfig):
    """float32, unchanged."""

    name: Literal["identity"] = "identity"


class FP16Codec(ComponentConfig):
    """IEEE half precision (values beyond +-65504 are clamped)."""

    name: Literal["fp16"] = "fp16"


class BF16Codec(ComponentConfig):
    """bfloat16: float32's range, 8 bits of mantissa."""

    name: Literal["bf16"] = "bf16"


class Int8Codec(ComponentConfig):
    """Symmetric uniform 8-bit quantisation with a float32 scale per tensor or per output channel."""

    name: Literal["int8"] = "int8"
    per_channel: bool = Field(
        default=False, description="One scale per row (dim 0) of tensors with >= 2 dims."
    )


class QSGDCodec(ComponentConfig):
    """QSGD stochastic quantisation to ``levels`` levels per sign, unbiased (Alistarh et al., 2017)."""

    name: Literal["qsgd"] = "qsgd"
    levels: int = Field(default=16, ge=1, le=32767, description="Quantisation levels s (per sign).")
    bucket_size: Size = Field(default=512, description="Coordinates sharing one norm.")


class SignCodec(ComponentConfig):
    """Scaled sign: one bit per coordinate times the mean magnitude (EF-signSGD, Karimireddy et al., 2019)."""

    name: Literal["sign"] = "sign"
    block_size: Size | None = Field(
        default=None,
        description="Coordinates sharing one scale (their mean magnitude); null: one per tensor.",
    )
    error_feedback: bool = True


class TopKCodec(ComponentConfig):
    """Keep the ``fraction`` largest-magnitude coordinates of each tensor (Stich et al., 2018)."""

    name: Literal["topk"] = "topk"
    fraction: float = Field(default=0.01, gt=0, le=1)
    error_feedback: bool = True


class RandKCodec(ComponentConfig):
    """Keep a random ``fraction`` of each tensor's coordinates; only a seed travels for the indices."""

    name: Literal["randk"] = "randk"
    fraction: float = Field(default=0.01, gt=0, le=1)
    error_feedback: bool = True


class DGCCodec(ComponentConfig):
    """Top-k with Deep Gradient Compression's momentum correction, masking and warm-up (Lin et al., 2018)."""

    name: Literal["dgc"] = "dgc"
    fraction: float = Field(default=0.01, gt=0, le=1, description="Kept fraction after the warm-up.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Momentum of the correction (0: none).")
    warmup: int = Field(
        default=4, ge=0, description="Updates with the kept fraction max(fraction, 0.25**(t+1)) first."
    )
    index_coding: Literal["gaps", "bitmap"] = Field(
        default="gaps",
        description="How the kept coordinates travel: int32 gaps, or a bit per coordinate (fewer bytes after zstd above a few percent kept).",
    )
    error_feedback: bool = True


class SketchCodec(ComponentConfig):
    """Count sketch of each tensor, unsketched to its top-k by the receiver (FetchSGD, Rothchild et al., 2020)."""

    name: Literal["sketch"] = "sketch"
    fraction: float = Field(default=0.05, gt=0, le=1, description="Table cells as a fraction of the tensor.")
    rows: Width = Field(default=5, description="Independent hash rows (the median is taken over them).")
    topk: float = Field(default=0.01, gt=0, le=1, description="Fraction of coordinates recovered.")
    seed: int = Field(default=0, ge=0, description="Seed of the hash functions sender and receiver share.")
    error_feedback: bool = True


class PowerSGDCodec(ComponentConfig):
    """Rank-r power iteration warm-started from the previous Q (Vogels et al., 2019)."""

    name: Literal["powersgd"] = "powersgd"
    rank: Width = 1
    bits: Literal[32, 16, 8] = Field(
        default=32, description="Width of the factors (and of tensors sent whole): float32, float16, or int8 with a scale per column."
    )
    error_feedback: bool = True


class BlockQCodec(ComponentConfig):
    """b-bit stochastic rounding with one float32 scale per block: unbiased (e.g. 4-bit, blocks of 64)."""

    name: Literal["blockq"] = "blockq"
    bits: Literal[2, 4, 8] = 4
    block_size: Size = Field(default=64, description="Coordinates sharing one scale.")


class ZstdCodec(ComponentConfig):
    """Lossless Zstandard compression of the serialised payload."""

    name: Literal["zstd"] = "zstd"
    level: int = Field(default=3, ge=1, le=22)
    dictionary: Literal[0, 1] = Field(
        default=0,
        description="1: prime both sides with fedmtl's header dictionary (about 200 bytes less a payload).",
    )


class LZ4Codec(ComponentConfig):
    """Lossless LZ4 block compression of the serialised payload."""

    name: Literal["lz4"] = "lz4"


#: ``Codec``: any registered codec (``fedmtl list codec``), chosen by ``name``
Codec = Annotated[SerializeAsAny[ComponentConfig], Registered("codec")]

#: the stages of a chain, in encoding order (a codec registers its ``stage``)
STAGES = ("sparsifier", "quantiser", "byte")
_STAGE_LABEL = {"sparsifier": "sparsifier", "quantiser": "quantiser", "byte": "byte codec"}


def codecs_of_stage(stage: str) -> frozenset[str]:
    """The registered codecs of one stage (``sparsifier``, ``quantiser`` or ``byte``)."""
    return frozenset(c.name for c in registry.components("codec") if c.traits["stage"] == stage)


def update_only_codecs() -> frozenset[str]:
    """Codecs meaningful for updates (with error feedback) only: registered with ``update_only=True``."""
    return frozenset(c.name for c in registry.components("codec") if c.traits.get("update_only"))


def _stage_name(stage: int) -> str:
    return f"{_STAGE_LABEL[STAGES[stage]]} ({', '.join(sorted(codecs_of_stage(STAGES[stage])))})"


def check_chain(names: list[str]) -> None:
    """Raise ``ValueError`` unless ``names`` is a valid chain: sparsifier, quantiser, byte codec, each optional.

    Args:
        names: codec names in encoding order.
    """
    last = -1
    for i, name in enumerate(names):
        try:
            stage = STAGES.index(registry.get("codec", name).traits["stage"])
        except registry.RegistryError:
            raise ValueError(f"unknown codec {name!r} at position {i}; allowed: {', '.join(registry.names('codec'))}") from None
        if stage == last:
            raise ValueError(
                f"codec chain {names} has two {_stage_name(stage)} stages ({names[i - 1]!r} and {name!r}); "
                "use at most one of each"
            )
        if stage < last:
            raise ValueError(
                f"codec chain {names}: {name!r} (a {_stage_name(stage)}) cannot follow {names[i - 1]!r} "
                f"(a {_stage_name(last)}); order is sparsifier -> quantiser -> byte codec"
            )
        last = stage


class CommConfig(StrictModel):
    """Codec chains, applied left to right when encoding (right to left when decoding)."""

    uplink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])  # type: ignore[arg-type]
    downlink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])  # type: ignore[arg-type]
    downlink_delta: list[Codec] = Field(
        default_factory=list,
        description=(
            "Chain for the model differences sent to clients that kept their last copy (the server's "
            "mirror of that copy is its error feedback); [] sends every client the full model by `downlink`."
        ),
    )
    uplink_ef21: bool = Field(
        default=False,
        description=(
            "EF21 (Richtárik et al., 2021): client and server keep an estimate g of each client's update; the "
            "client sends uplink(update - g), both add what it decodes to g, and the server aggregates the "
            "new g. Replaces error feedback: the uplink's codecs need error_feedback: false."
        ),
    )
    max_payload_mb: float = Field(
        default=1024.0, gt=0, description="Payloads larger than this (compressed or not) are rejected."
    )

    @field_validator("uplink", "downlink", "downlink_delta")
    @classmethod
    def _valid_chain(cls, chain: list[Codec]) -> list[Codec]:
        check_chain([c.name for c in chain])
        return chain

    @field_validator("downlink")
    @classmethod
    def _downlink_sends_parameters(cls, chain: list[Codec]) -> list[Codec]:
        update_only = [c.name for c in chain if c.name in update_only_codecs()]
        if update_only:
            raise ValueError(
                f"comm.downlink carries the global parameters, not updates: {update_only} would zero or "
                "binarise weights; use fp16, bf16, int8, qsgd, blockq and/or zstd/lz4 on the downlink, "
                "and put update codecs in comm.downlink_delta (differences to the client's last copy)"
            )
        return chain

    @model_validator(mode="after")
    def _ef21_replaces_error_feedback(self) -> CommConfig:
        with_ef = [c.name for c in self.uplink if getattr(c, "error_feedback", False)]
        if self.uplink_ef21 and with_ef:
            raise ValueError(
                f"comm.uplink_ef21 replaces error feedback (the estimate keeps what a payload leaves out), but "
                f"uplink codec(s) {with_ef} have error_feedback: true; set error_feedback: false on them"
            )
        return self

    @field_validator("downlink_delta")
    @classmethod
    def _delta_is_stateless(cls, chain: list[Codec]) -> list[Codec]:
        if any(c.name == "dgc" and (getattr(c, "momentum", 0) or getattr(c, "warmup", 0)) for c in chain):
            raise ValueError(
                "comm.downlink_delta cannot use 'dgc' with momentum > 0 or warmup > 0: they need per-receiver "
                "sender state, and the downlink's error feedback is the server's mirror of each client's copy; "
                "use dgc with momentum: 0 and warmup: 0 (top-k with gap-coded indices), topk, randk, sketch, "
                "powersgd or a quantiser"
            )
        return chain
