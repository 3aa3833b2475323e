"""Configuration of local (client) training and of the server's round loop."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedmtl.config.base import StrictModel


class SGD(StrictModel):
    """Minibatch SGD on the client."""

    name: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class Adam(StrictModel):
    """Adam on the client (its moments restart each round: they are not part of the global model)."""

    name: Literal["adam"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(default=0.0, ge=0)


ClientOptimizer = Annotated[Union[SGD, Adam], Field(discriminator="name")]


class ClientConfig(StrictModel):
    """Local training on each client: E epochs of minibatches from the current global model."""

    epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    optimizer: ClientOptimizer = Field(default_factory=SGD)
    max_grad_norm: PositiveFloat | None = Field(default=None, description="Clip each step's gradient norm.")


class FedAvgServer(StrictModel):
    """FedAvg: the global model moves by the weighted mean update times ``lr`` (1 = plain averaging)."""

    name: Literal["fedavg"] = "fedavg"
    lr: PositiveFloat = 1.0


ServerOptimizer = Annotated[Union[FedAvgServer], Field(discriminator="name")]


class WeightedMean(StrictModel):
    """Sample-count weighted mean (FedAvg's aggregation)."""

    name: Literal["mean"] = "mean"


Aggregator = Annotated[Union[WeightedMean], Field(discriminator="name")]


class ServerConfig(StrictModel):
    """The round loop: who takes part, how updates are combined, how the global model moves."""

    rounds: PositiveInt = 10
    clients_per_round: PositiveInt | None = Field(default=None, description="Cohort size (exclusive with fraction).")
    fraction: float | None = Field(default=None, gt=0, le=1, description="Cohort as a share of all clients.")
    optimizer: ServerOptimizer = Field(default_factory=FedAvgServer)
    aggregator: Aggregator = Field(default_factory=WeightedMean)

    @model_validator(mode="after")
    def _one_cohort_rule(self) -> ServerConfig:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError(
                f"set either server.clients_per_round ({self.clients_per_round}) or server.fraction "
                f"({self.fraction}), not both"
            )
        return self
