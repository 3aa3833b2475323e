"""Configuration of what travels between server and clients: codec chains per direction."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from fedmtl.config.base import StrictModel


class IdentityCodec(StrictModel):
    """float32, unchanged."""

    name: Literal["identity"] = "identity"


Codec = Annotated[Union[IdentityCodec], Field(discriminator="name")]


class CommConfig(StrictModel):
    """Codec chains, applied left to right when encoding (right to left when decoding)."""

    uplink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])
    downlink: list[Codec] = Field(default_factory=lambda: [IdentityCodec()])
