"""MLflow: one MLflow run per fedmtl run; metrics per round (step = round), the config as params and artifact.

Through ``MlflowClient`` (no global active run), by default on a SQLite file inside the run folder
(``RUN_DIR/tracking/mlflow.db``, artifacts in ``RUN_DIR/tracking/mlartifacts``), so it works offline;
``mlflow ui --backend-store-uri sqlite:///RUN_DIR/tracking/mlflow.db`` shows it. (MLflow 3 refuses its
older ``./mlruns`` folder store unless told otherwise; a ``tracking_uri`` may still name one.)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fedmtl._extras import require
from fedmtl.config.tracking import MLflowTracking
from fedmtl.report.metrics_log import flatten
from fedmtl.tracking.base import Callback, RunInfo, scalars

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS = 100  # ... and of params per call


class MLflowCallback(Callback):
    """Logs to an MLflow tracking store (default: ``sqlite:///RUN_DIR/tracking/mlflow.db``)."""

    def __init__(self, cfg: MLflowTracking):
        self.cfg = cfg
        self._mlflow = require("mlflow", "mlflow", "tracking to MLflow")
        self._client: Any = None
        self._run_id = ""

    def on_start(self, run: RunInfo) -> None:
        folder = (run.run_dir / "tracking").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        self._client = self._mlflow.MlflowClient(tracking_uri=self.cfg.tracking_uri or f"sqlite:///{folder / 'mlflow.db'}")
        found = self._client.get_experiment_by_name(self.cfg.experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else self._client.create_experiment(self.cfg.experiment, artifact_location=(folder / "mlartifacts").as_uri())
        )
        self._run_id = self._client.create_run(experiment_id, run_name=run.name).info.run_id
        entities = require("mlflow.entities", "mlflow", "tracking to MLflow")
        params = [entities.Param(k, str(v)[:6000]) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self._client.log_batch(self._run_id, params=params[i : i + MAX_PARAMS])
        config_yaml = run.run_dir / "config.yaml"
        if config_yaml.exists():
            self._client.log_artifact(self._run_id, str(config_yaml))

    def on_round(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        entities = require("mlflow.entities", "mlflow", "tracking to MLflow")
        now, step = int(time.time() * 1000), int(record["round"])
        metrics = [entities.Metric(k, v, now, step) for k, v in scalars(record).items()]
        for i in range(0, len(metrics), MAX_BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[i : i + MAX_BATCH])

    def on_end(self, run: RunInfo) -> None:
        if self._client is not None and self._run_id:
            self._client.set_terminated(self._run_id)
            self._run_id = ""

