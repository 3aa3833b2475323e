"""Configuration of the engine that executes a cohort's local training."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveInt

from fedmtl.config.base import StrictModel


class SequentialEngine(StrictModel):
    """One client after another: the reference every other engine is tested against."""

    name: Literal["sequential"] = "sequential"


Engine = Annotated[Union[SequentialEngine], Field(discriminator="name")]


class RuntimeConfig(StrictModel):
    """Process-level settings."""

    threads: PositiveInt | None = Field(default=None, description="torch threads (default: torch's own choice).")
