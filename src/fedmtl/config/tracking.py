"""Experiment tracking: where each round's metrics go besides ``metrics.jsonl``.

``tracking`` is a list, so a run can log to several backends at once; each backend is an optional
extra, imported only when a run uses it (:mod:`fedmtl.tracking`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fedmtl.config.base import StrictModel


class TensorBoardTracking(StrictModel):
    """TensorBoard event files (the ``tensorboard`` extra): ``tensorboard --logdir RUN_DIR/tracking``."""

    name: Literal["tensorboard"] = "tensorboard"
    log_dir: str | None = Field(default=None, description="Event folder (default: RUN_DIR/tracking/tensorboard).")


class MLflowTracking(StrictModel):
    """An MLflow run (the ``mlflow`` extra); by default a local SQLite store in the run folder, no server needed."""

    name: Literal["mlflow"] = "mlflow"
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: sqlite:///RUN_DIR/tracking/mlflow.db)."
    )
    experiment: str = Field(default="fedmtl", min_length=1, description="MLflow experiment the run is filed under.")


class WandbTracking(StrictModel):
    """A Weights & Biases run (the ``wandb`` extra); offline by default: files in the run folder, no network."""

    name: Literal["wandb"] = "wandb"
    project: str = Field(default="fedmtl", min_length=1)
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = Field(
        default="offline", description="offline: write locally (`wandb sync` uploads later); online needs a login."
    )
    dir: str | None = Field(default=None, description="Where wandb writes (default: RUN_DIR/tracking).")


Tracker = Annotated[TensorBoardTracking | MLflowTracking | WandbTracking, Field(discriminator="name")]
