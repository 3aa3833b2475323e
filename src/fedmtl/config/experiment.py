"""The whole experiment: one frozen, validated object from which everything else is built."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedmtl.config.algorithm import Algorithm, FedAvgAlgorithm
from fedmtl.config.base import Count, Seed, Size, StrictModel
from fedmtl.config.comm import CommConfig
from fedmtl.config.data import ArraysSource, DataConfig, TableSource
from fedmtl.config.engine import DefaultEngine, Engine, RuntimeConfig
from fedmtl.config.model import Architecture, HardSharing
from fedmtl.config.mtl import MTLConfig, loss_balancers
from fedmtl.config.privacy import PrivacyConfig
from fedmtl.config.systems import FedBuffMode, SystemsConfig
from fedmtl.config.tracking import Tracker
from fedmtl.config.training import SGD, ClientConfig, ServerConfig


class EvaluationConfig(StrictModel):
    """When and how the global and personalised models are evaluated."""

    every: Count = Field(default=1, description="Evaluate every N rounds (and always after the last).")
    personalized: bool = Field(default=True, description="Also evaluate on every client's local test split.")
    batch_size: Size = 1024


class OutputConfig(StrictModel):
    """Where a run writes, and how often it checkpoints."""

    dir: str = "runs"
    name: str | None = Field(default=None, description="Run folder name (default: a timestamp).")
    overwrite: bool = Field(
        default=False,
        description="Start afresh in a run folder that already holds a run (its outputs are deleted); "
        "by default such a folder is refused (resume it instead).",
    )
    checkpoint_every: Count = 1
    keep_checkpoints: Count = 2
    plots: bool = True


#: the algorithms that accept a BatchNorm trunk (the running statistics are per-client state)
BATCH_NORM_ALGORITHMS = ("fedbn", "local")
#: algorithms whose server step reads each client's own upload (not only the aggregate), and what it reads:
#: DP-FedAvg clips and noises, and secure aggregation masks, only the aggregated model update
READS_EACH_UPLOAD = {
    "scaffold": "each client's control-variate change delta_c",
    "ifca": "each client's update and its choice of cluster",
    "fedem": "each client's components, gate and mixture weights",
    "mocha": "each client's task heads (to update W and Omega)",
}
#: algorithms whose whole client side is the local trainer's plain steps, which DP-SGD replaces by clipped,
#: noised ones; the others train in loops of their own (APFL, pFedMe, FedEM), add terms to the steps
#: (FedProx, Ditto, MOCHA, SCAFFOLD), train in phases (FedRep) or choose on their data outside the steps (IFCA)
DP_SGD_ALGORITHMS = ("fedavg", "fedper", "fedbn", "local")


class ExperimentConfig(StrictModel):
    """A federated multi-task experiment. Every default lives here or in the section models."""

    seed: Seed = 0
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
    tracking: list[Tracker] = Field(default_factory=list, description="Backends each round is logged to: tensorboard, mlflow, wandb.")
    systems: SystemsConfig | None = Field(
        default=None,
        description="Simulated client speeds, availability and asynchrony on a virtual clock (docs/systems.md); None: every client answers at once.",
    )

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
    def _systems_fit(self) -> ExperimentConfig:
        """The simulated clock drives the in-process round; FedBuff steps without a cohort-wide server step."""
        if self.systems is None:
            return self
        if self.engine.name == "distributed":
            raise ValueError("systems cannot be combined with engine 'distributed': the simulated clock runs in one process; use 'vectorized'")
        mode = self.systems.mode
        if isinstance(mode, FedBuffMode):
            if self.algorithm.name in READS_EACH_UPLOAD:
                raise ValueError(
                    f"systems.mode 'fedbuff' cannot run algorithm {self.algorithm.name!r}: its server state is broadcast "
                    f"and updated per round from {READS_EACH_UPLOAD[self.algorithm.name]}, which asynchronous clients on "
                    f"older model versions would mix up; allowed: algorithms without a server step (not {', '.join(sorted(READS_EACH_UPLOAD))})"
                )
            fixed = not isinstance(self.data.source, (TableSource, ArraysSource))
            if fixed and mode.concurrency > self.data.num_clients:
                raise ValueError(
                    f"systems.mode.concurrency={mode.concurrency} exceeds data.num_clients={self.data.num_clients}; "
                    f"allowed: 1..{self.data.num_clients}"
                )
        return self

    @model_validator(mode="after")
    def _ef21_needs_each_update(self) -> ExperimentConfig:
        """EF21's server keeps a mirror of each client's estimate and adds what that client's payload decodes to."""
        if not self.comm.uplink_ef21:
            return self
        if self.privacy.secure_aggregation is not None:
            raise ValueError(
                "comm.uplink_ef21 cannot be combined with privacy.secure_aggregation: the server must decode each "
                "client's payload to keep its EF21 estimate, and secure aggregation reveals only the sum"
            )
        if self.systems is not None and isinstance(self.systems.mode, FedBuffMode):
            raise ValueError(
                "comm.uplink_ef21 cannot be combined with systems.mode 'fedbuff': an asynchronous client's estimate "
                "would change between its dispatch and its arrival; use synchronous rounds"
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

    @model_validator(mode="after")
    def _scaffold_needs_plain_sgd(self) -> ExperimentConfig:
        """SCAFFOLD's control variates are defined for plain SGD steps (Karimireddy et al. 2020, Alg. 1)."""
        opt = self.client.optimizer
        if self.algorithm.name == "scaffold" and not (isinstance(opt, SGD) and opt.momentum == 0):
            shown = f"{opt.name} with momentum {opt.momentum}" if isinstance(opt, SGD) else opt.name
            raise ValueError(
                f"algorithm 'scaffold' needs client.optimizer sgd with momentum 0, got {shown}: its control "
                "variates correct plain SGD steps (Karimireddy et al. 2020); set client.optimizer: {name: sgd, momentum: 0}"
            )
        return self

    @model_validator(mode="after")
    def _private_aggregation_is_the_mean(self) -> ExperimentConfig:
        """DP-FedAvg and secure aggregation compute a (noised / masked) sum: the weighted mean, nothing else."""
        protected = [p for p in ("dp", "secure_aggregation") if getattr(self.privacy, p) is not None]
        if protected and self.server.aggregator.name != "mean":
            raise ValueError(
                f"server.aggregator {self.server.aggregator.name!r} cannot be combined with privacy.{protected[0]}: "
                "the private aggregate is a clipped, noised or masked sum, so the server never sees the single "
                "updates a robust aggregator ranks or trims; use server.aggregator 'mean' (or turn privacy off)"
            )
        return self

    @model_validator(mode="after")
    def _privacy_covers_every_upload(self) -> ExperimentConfig:
        """A privacy guarantee that part of a client's upload or training escapes is refused, not reported."""
        name = self.algorithm.name
        protected = [p for p in ("dp", "secure_aggregation") if getattr(self.privacy, p) is not None]
        if name in READS_EACH_UPLOAD and protected:
            raise ValueError(
                f"privacy.{protected[0]} covers the aggregated model update only, and algorithm {name!r}'s server "
                f"step reads {READS_EACH_UPLOAD[name]}; choose an algorithm whose server sees only the aggregate "
                f"(not {', '.join(sorted(READS_EACH_UPLOAD))})"
            )
        if self.privacy.dp_sgd is not None and name not in DP_SGD_ALGORITHMS:
            raise ValueError(
                f"privacy.dp_sgd privatises the local trainer's plain steps, which algorithm {name!r} changes or "
                f"goes around; allowed: {', '.join(DP_SGD_ALGORITHMS)}"
            )
        if self.privacy.dp_sgd is not None and self.mtl.balancer.name not in loss_balancers():
            raise ValueError(
                f"privacy.dp_sgd needs a balancer that only weights losses; mtl.balancer {self.mtl.balancer.name!r} "
                f"needs per-task gradients, which per-sample clipping does not provide; allowed: {', '.join(sorted(loss_balancers()))}"
            )
        return self
