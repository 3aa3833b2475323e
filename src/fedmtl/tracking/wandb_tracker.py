"""Weights & Biases: one wandb run per fedmtl run, offline by default (``wandb sync`` uploads it later)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmtl._extras import require
from fedmtl.config.tracking import WandbTracking
from fedmtl.tracking.base import Callback, RunInfo, scalars


class WandbCallback(Callback):
    """Logs each round's numbers (step = round) and the resolved config as the run's config."""

    def __init__(self, cfg: WandbTracking):
        self.cfg = cfg
        self._wandb = require("wandb", "wandb", "tracking to Weights & Biases")
        self._run: Any = None

    def on_start(self, run: RunInfo) -> None:
        folder = Path(self.cfg.dir) if self.cfg.dir else run.run_dir / "tracking"
        folder.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=run.name,
            dir=str(folder),
            mode=self.cfg.mode,
            config=dict(run.config),
            reinit="create_new",  # several runs in one process (tests, sweeps) each get their own
            settings=self._wandb.Settings(silent=True, console="off"),
        )

    def on_round(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        self._run.log(scalars(record), step=int(record["round"]))

    def on_end(self, run: RunInfo) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
