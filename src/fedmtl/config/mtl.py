"""Configuration of the local multi-task objective: how task losses become one update."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat

from fedmtl.config.base import StrictModel


class EqualWeighting(StrictModel):
    """Sum of the task losses, each with weight 1."""

    name: Literal["equal"] = "equal"


class StaticWeighting(StrictModel):
    """Fixed weights: f1 + lambda * f2, and so on. Tasks not listed get weight 1."""

    name: Literal["static"] = "static"
    weights: dict[str, PositiveFloat]


Balancer = Annotated[Union[EqualWeighting, StaticWeighting], Field(discriminator="name")]


class WeightedSum(StrictModel):
    """Joint optimisation of the weighted sum of task losses, weights from the balancer."""

    name: Literal["weighted_sum"] = "weighted_sum"


Scheme = Annotated[Union[WeightedSum], Field(discriminator="name")]


class MTLConfig(StrictModel):
    """The local objective: a joint-optimisation scheme and a loss balancer."""

    scheme: Scheme = Field(default_factory=WeightedSum)
    balancer: Balancer = Field(default_factory=EqualWeighting)
