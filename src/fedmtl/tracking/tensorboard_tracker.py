"""TensorBoard: each round's numbers as scalars (step = round), the resolved config as text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedmtl._extras import require
from fedmtl.config.tracking import TensorBoardTracking
from fedmtl.tracking.base import Callback, RunInfo, scalars


class TensorBoardCallback(Callback):
    """Writes event files to ``log_dir`` (default ``RUN_DIR/tracking/tensorboard``)."""

    def __init__(self, cfg: TensorBoardTracking):
        self.cfg = cfg
        self._module = require("torch.utils.tensorboard", "tensorboard", "tracking to TensorBoard")
        self._writer: Any = None

    def on_start(self, run: RunInfo) -> None:
        log_dir = Path(self.cfg.log_dir) if self.cfg.log_dir else run.run_dir / "tracking" / "tensorboard"
        self._writer = self._module.SummaryWriter(log_dir=str(log_dir))
        config = yaml.safe_dump(dict(run.config), sort_keys=False)
        self._writer.add_text("config", "    " + config.replace("\n", "\n    "), global_step=0)  # indented: shown verbatim

    def on_round(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        step = int(record["round"])
        for key, value in scalars(record).items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def on_end(self, run: RunInfo) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
