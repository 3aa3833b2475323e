"""Configuration of local (client) training and of the server's round loop."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat, SerializeAsAny, model_validator

from fedmtl.config.base import MAX_SIZE, Count, Size, StrictModel
from fedmtl.config.registered import ComponentConfig, Registered


class SGD(ComponentConfig):
    """Minibatch SGD on the client."""

    name: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class Adam(ComponentConfig):
    """Adam on the client (its moments restart each round: they are not part of the global model)."""

    name: Literal["adam"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(default=0.0, ge=0)


ClientOptimizer = Annotated[Union[SGD, Adam], Field(discriminator="name")]


class ClientConfig(StrictModel):
    """Local training on each client: E epochs of minibatches from the current global model."""

    epochs: Count = 1
    batch_size: Size = 32
    optimizer: ClientOptimizer = Field(default_factory=SGD)
    max_grad_norm: PositiveFloat | None = Field(default=None, description="Clip each step's gradient norm.")


class FedAvgServer(ComponentConfig):
    """FedAvg: the global model moves by the weighted mean update times ``lr`` (1 = plain averaging)."""

    name: Literal["fedavg"] = "fedavg"
    lr: PositiveFloat = 1.0


class FedAvgMServer(ComponentConfig):
    """FedAvgM: server momentum ``m = momentum * m + Δ``, ``x += lr * m`` (Hsu et al., 2019)."""

    name: Literal["fedavgm"] = "fedavgm"
    lr: PositiveFloat = 1.0
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False


class _AdaptiveServer(ComponentConfig):
    """Reddi et al. (2021) adaptive server optimiser: ``x += lr * m / (sqrt(v) + tau)``."""

    lr: PositiveFloat = 0.01
    b1: float = Field(default=0.9, ge=0, lt=1)
    b2: float = Field(default=0.99, ge=0, lt=1)
    tau: PositiveFloat = 1e-3
    initial_accumulator: float | None = Field(default=None, ge=0, description="v_{-1}; default tau**2.")


class FedAdagradServer(_AdaptiveServer):
    """FedAdagrad: ``v += Δ²`` (b2 unused)."""

    name: Literal["fedadagrad"] = "fedadagrad"
    lr: PositiveFloat = 0.1


class FedAdamServer(_AdaptiveServer):
    """FedAdam: ``v = b2 v + (1 - b2) Δ²``."""

    name: Literal["fedadam"] = "fedadam"


class FedYogiServer(_AdaptiveServer):
    """FedYogi: ``v -= (1 - b2) Δ² sign(v - Δ²)``."""

    name: Literal["fedyogi"] = "fedyogi"


#: ``ServerOptimizer``: any registered server_optimizer (``fedmtl list server_optimizer``), chosen by ``name``
ServerOptimizer = Annotated[SerializeAsAny[ComponentConfig], Registered("server_optimizer")]


class WeightedMean(ComponentConfig):
    """Sample-count weighted mean (FedAvg's aggregation)."""

    name: Literal["mean"] = "mean"


class CoordinateMedian(ComponentConfig):
    """Coordinate-wise median of the updates (Yin et al., 2018)."""

    name: Literal["median"] = "median"


class TrimmedMean(ComponentConfig):
    """Coordinate-wise mean after dropping the ``beta`` share largest and smallest values (Yin et al., 2018)."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    beta: float = Field(default=0.1, ge=0, lt=0.5)


class KrumAggregator(ComponentConfig):
    """(Multi-)Krum: mean of the ``m`` updates closest to their neighbours, tolerating ``f`` attackers (Blanchard et al., 2017)."""

    name: Literal["krum"] = "krum"
    f: int = Field(default=1, ge=0, le=MAX_SIZE, description="Byzantine updates tolerated.")
    m: Size = Field(default=1, description="Updates averaged (1 = Krum, >1 = Multi-Krum).")


class NormBoundedMean(ComponentConfig):
    """Clip each update to ``max_norm`` (L2, per parameter group), then the weighted mean (Sun et al., 2019)."""

    name: Literal["norm_bounded"] = "norm_bounded"
    max_norm: PositiveFloat = 1.0


#: ``Aggregator``: any registered aggregator (``fedmtl list aggregator``), chosen by ``name``
Aggregator = Annotated[SerializeAsAny[ComponentConfig], Registered("aggregator")]


class ByzantineConfig(StrictModel):
    """Simulated Byzantine clients: a fixed ``fraction`` of clients replace their update by an attack."""

    fraction: float = Field(default=0.2, ge=0, le=1)
    attack: Literal[
        "sign_flip", "scaled", "gaussian", "nan", "sample_inflation", "payload_bomb", "label_flip", "alie", "ipm"
    ] = "sign_flip"
    scale: PositiveFloat = Field(
        default=1.0,
        description="sign_flip: -scale * Δ; scaled: scale * Δ; gaussian: noise std; sample_inflation: claimed "
        "samples = scale * true; alie: z = scale * z_max; ipm: -scale * honest mean (fedmtl.fl.byzantine).",
    )


class ServerConfig(StrictModel):
    """The round loop: who takes part, how updates are combined, how the global model moves."""

    rounds: Count = 10
    clients_per_round: Size | None = Field(default=None, description="Cohort size (exclusive with fraction).")
    fraction: float | None = Field(default=None, gt=0, le=1, description="Cohort as a share of all clients.")
    optimizer: ServerOptimizer = Field(default_factory=FedAvgServer)
    aggregator: Aggregator = Field(default_factory=WeightedMean)
    byzantine: ByzantineConfig | None = Field(default=None, description="Simulated attackers (None: all honest).")

    @model_validator(mode="after")
    def _one_cohort_rule(self) -> ServerConfig:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError(
                f"set either server.clients_per_round ({self.clients_per_round}) or server.fraction "
                f"({self.fraction}), not both"
            )
        return self
