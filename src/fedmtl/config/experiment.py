"""The whole experiment: one frozen, validated object from which everything else is built."""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from fedmtl.config.algorithm import Algorithm, FedAvgAlgorithm
from fedmtl.config.base import StrictModel
from fedmtl.config.comm import CommConfig
from fedmtl.config.data import ArraysSource, DataConfig, TableSource
from fedmtl.config.engine import DefaultEngine, Engine, RuntimeConfig
from fedmtl.config.model import Architecture, HardSharing
from fedmtl.config.mtl import MTLConfig
from fedmtl.config.privacy import PrivacyConfig
from fedmtl.config.training import ClientConfig, ServerConfig


class EvaluationConfig(StrictModel):
    """When and how the global and personalised models are evaluated."""

    every: PositiveInt = Field(default=1, description="Evaluate every N rounds (and always after the last).")
    personalized: bool = Field(default=True, description="Also evaluate on every client's local test split.")
    batch_size: PositiveInt = 1024


class OutputConfig(StrictModel):
    """Where a run writes, and how often it checkpoints."""

    dir: str = "runs"
    name: str | None = Field(default=None, description="Run folder name (default: a timestamp).")
    checkpoint_every: PositiveInt = 1
    keep_checkpoints: PositiveInt = 2
    plots: bool = True


#: the algorithms that accept a BatchNorm trunk (the running statistics are per-client state)
BATCH_NORM_ALGORITHMS = ("fedbn", "local")


class ExperimentConfig(StrictModel):
    """A federated multi-task experiment. Every default lives here or in the section models."""

    seed: int = Field(default=0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: Architecture = Field(default_factory=HardSharing)
    mtl: MTLConfig = Field(default_factory=MTLConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    algorithm: Algorithm = Field(default_factory=FedAvgAlgorithm)
    comm: CommConfig = Field(default_factory=CommConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    engine: Engine = Field(default_factory=DefaultEngine)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _cohort_fits(self) -> ExperimentConfig:
        n = self.server.clients_per_round
        if n is not None and n > self.data.num_clients and not isinstance(self.data.source, (TableSource, ArraysSource)):
            raise ValueError(
                f"server.clients_per_round={n} exceeds data.num_clients={self.data.num_clients}; "
                f"allowed: 1..{self.data.num_clients}"
            )
        return self

    @model_validator(mode="after")
    def _batch_norm_needs_fedbn(self) -> ExperimentConfig:
        trunk = getattr(self.model, "trunk", None)
        if getattr(trunk, "norm", "none") != "batch":
            return self
        if self.algorithm.name not in BATCH_NORM_ALGORITHMS:
            raise ValueError(
                f"model.trunk.norm='batch' needs algorithm.name 'fedbn' (or 'local'), got {self.algorithm.name!r}: "
                "BatchNorm running statistics stay on each client and are never aggregated, which only FedBN "
                "(Li et al. 2021) and local-only training are defined for"
            )
        if self.privacy.dp_sgd is not None:
            raise ValueError("model.trunk.norm='batch' cannot be combined with privacy.dp_sgd (per-sample gradients need no BatchNorm)")
        return self
