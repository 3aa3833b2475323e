"""Configuration of the multi-task model: a trunk (what tasks share) and the sharing architecture."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveInt

from fedmtl.config.base import StrictModel


class MLPTrunk(StrictModel):
    """A multilayer perceptron on flattened inputs."""

    name: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = Field(default=[128, 128], min_length=1)
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)


class CNN1DTrunk(StrictModel):
    """A 1-D convolutional trunk for signals such as MNIST-1D."""

    name: Literal["cnn1d"] = "cnn1d"
    channels: list[PositiveInt] = Field(default=[32, 32], min_length=1)
    kernel_size: PositiveInt = 5
    hidden: PositiveInt = 128


class CNN2DTrunk(StrictModel):
    """A 2-D convolutional trunk for images such as Fashion-MNIST."""

    name: Literal["cnn2d"] = "cnn2d"
    channels: list[PositiveInt] = Field(default=[32, 64], min_length=1)
    hidden: PositiveInt = 128


Trunk = Annotated[Union[MLPTrunk, CNN1DTrunk, CNN2DTrunk], Field(discriminator="name")]


class HardSharing(StrictModel):
    """Hard parameter sharing: one shared trunk, one head per task."""

    name: Literal["hard_sharing"] = "hard_sharing"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    head_hidden: list[PositiveInt] = Field(default=[], description="Hidden layers of each task head.")


Architecture = Annotated[Union[HardSharing], Field(discriminator="name")]
