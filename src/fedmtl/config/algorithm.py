"""Configuration of the federated algorithm's client side (FedAvg, and personalisation methods)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from fedmtl.config.base import StrictModel


class FedAvgAlgorithm(StrictModel):
    """Plain federated averaging: every client trains the global model on its own tasks."""

    name: Literal["fedavg"] = "fedavg"


Algorithm = Annotated[Union[FedAvgAlgorithm], Field(discriminator="name")]
