"""The run loop's side of tracking: the callbacks of one experiment, started once, ended once."""

from __future__ import annotations

import atexit
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmtl.config.tracking import MLflowTracking, TensorBoardTracking, Tracker, WandbTracking
from fedmtl.tracking.base import Callback, RunInfo


def _tensorboard(cfg: Any) -> Callback:
    from fedmtl.tracking.tensorboard_tracker import TensorBoardCallback

    return TensorBoardCallback(cfg)


def _mlflow(cfg: Any) -> Callback:
    from fedmtl.tracking.mlflow_tracker import MLflowCallback

    return MLflowCallback(cfg)


def _wandb(cfg: Any) -> Callback:
    from fedmtl.tracking.wandb_tracker import WandbCallback

    return WandbCallback(cfg)


#: config model -> backend (each backend module imports its library only when built)
BACKENDS: dict[type, Callable[[Any], Callback]] = {
    TensorBoardTracking: _tensorboard,
    MLflowTracking: _mlflow,
    WandbTracking: _wandb,
}


def build_callbacks(trackers: Sequence[Tracker]) -> list[Callback]:
    """The backends a ``tracking`` config section lists, in its order."""
    return [BACKENDS[type(t)](t) for t in trackers]


class Tracking:
    """An experiment's callbacks: :meth:`on_round` starts them on the first round and ends them after the last.

    A run that stops early (a privacy budget spent, an exception, Ctrl-C) ends them when the process exits.
    """

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks: list[Callback] = list(callbacks)
        self._run: RunInfo | None = None

    def on_round(self, run_dir: Path, config: Any, record: Mapping[str, Any]) -> None:
        """Forward one round's record; ``config`` is the run's :class:`~fedmtl.config.ExperimentConfig`."""
        if not self.callbacks:
            return
        if self._run is None or self._run.run_dir != Path(run_dir):
            self.close()
            self._run = RunInfo(Path(run_dir), config.model_dump(mode="json"), config.server.rounds)
            atexit.register(self.close)
            for callback in self.callbacks:
                callback.on_start(self._run)
        for callback in self.callbacks:
            callback.on_round(self._run, record)
        if int(record.get("round", 0)) >= self._run.rounds:
            self.close()

    def close(self) -> None:
        """End every callback of the current run (a no-op when none is running)."""
        run, self._run = self._run, None
        if run is None:
            return
        atexit.unregister(self.close)
        for callback in self.callbacks:
            callback.on_end(run)
