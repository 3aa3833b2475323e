"""``Experiment``: build everything from a config, run the rounds, write the run folder, resume.

The run folder holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (a line per round),
``summary.json``, PNG plots, ``report.html`` and ``checkpoints/``.
"""

from __future__ import annotations

import copy
import functools
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmtl._extras import require
from fedmtl.atomic import remove_stale_temps
from fedmtl.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from fedmtl.data import FederatedData, SourceData, build_federated_data
from fedmtl.engine import make_federation
from fedmtl.engine.device import DeviceError, resolve_device
from fedmtl.fl.client import load_parameters
from fedmtl.fl.systems import Rounds, build_systems
from fedmtl.mtl import MultiTaskModel, build_model
from fedmtl.mtl.factory import as_model
from fedmtl.report import render_report
from fedmtl.report.metrics_log import flatten
from fedmtl.runloop.checkpoint import CheckpointError, check_resumable
from fedmtl.runloop.loop import run_rounds
from fedmtl.runloop.progress import Bar
from fedmtl.runloop.simulation import Simulation
from fedmtl.tracking import Callback, Tracking, build_callbacks

log = logging.getLogger("fedmtl")


#: what a run writes into its folder (``output.overwrite`` deletes these, and nothing else)
RUN_OUTPUTS = ("checkpoints", "plots", "metrics.jsonl", "summary.json", "clients.json", "report.html", "config.yaml", "tracking")


@dataclass(frozen=True)
class Results:
    """What a finished run returns: where it wrote, its summary and its per-round history.

    Attributes:
        run_dir: the run folder.
        summary: ``summary.json``: final metrics, bytes, privacy, data.
        history: ``metrics.jsonl``, one dict per round (evaluation metrics only on evaluated rounds);
            :meth:`to_pandas` is its table view.
        params: the final global model's parameters (``model.named_parameters()`` names); :meth:`model`
            loads them into a model ready to predict.
    """

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    params: dict[str, torch.Tensor]

    def to_pandas(self) -> Any:
        """The history as a ``pandas.DataFrame``: one row per round (the index), one column per metric.

        Nested records are flattened with dots (``global.digit.accuracy``, ``personalized.digit.pooled.accuracy``,
        ``train_loss.parity``); a metric a round did not compute (evaluation every k rounds) is NaN.
        Needs pandas (the ``tables`` extra).
        """
        pd = require("pandas", "tables", "Results.to_pandas()")
        rows = [flatten(record) for record in self.history]
        return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame(index=pd.Index([], name="round"))

    def model(self, experiment: Experiment | None = None) -> MultiTaskModel:
        """The final global model, in eval mode, ready to predict: ``model(x)`` -> ``{task: prediction}``.

        Inputs must be preprocessed as the run's were (``data.preprocessing``: cleaning, normalisation):
        the splits of the experiment's ``data`` are. A multiclass prediction is a row of logits, a
        binary one a logit, a regression one a value (normalised when the targets were).

        Args:
            experiment: the :class:`Experiment` that ran (needed when it was given in-memory data or a
                model object in Python); by default one rebuilt from the run's ``config.yaml``.
        """
        if experiment is None:
            cfg = load_config(self.run_dir / "config.yaml")
            if cfg.data.source.name == "arrays":
                raise ConfigError("this run used in-memory data: pass Results.model(experiment) with the Experiment that ran it")
            experiment = Experiment(cfg)
        model = experiment.build_model()
        load_parameters(model, self.params)
        return model.eval()


def _as_config(config: ExperimentConfig | dict[str, Any] | str | Path | None) -> ExperimentConfig:
    if config is None:
        return ExperimentConfig()
    if isinstance(config, ExperimentConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


class Experiment:
    """A federated multi-task experiment.

    Args:
        config: an :class:`ExperimentConfig`, a dict, a YAML path, or None for the defaults.
        source: optional in-memory data (see :func:`fedmtl.data.from_arrays`) replacing ``config.data.source``.
        model: your own model instead of ``config.model``: a ``torch.nn.Module`` whose ``forward(x)`` returns
            ``{task: prediction}`` (copied, so yours is never changed), or a factory returning one (called with
            ``input_shape`` / ``tasks`` when it names them). Task parameters: its ``heads`` ModuleDict, or
            ``task_params``. For the CLI, torchrun and Flower, name a factory in the config instead
            (``model: {name: import, target: "pkg.module:factory"}``).
        task_params: task -> module-name prefixes of that task's own parameters (default: ``heads.<task>``).
    """

    def __init__(
        self,
        config: ExperimentConfig | dict[str, Any] | str | Path | None = None,
        source: SourceData | None = None,
        model: nn.Module | Callable[..., nn.Module] | None = None,
        task_params: Mapping[str, Sequence[str]] | None = None,
    ):
        self.config = _as_config(config)
        self.source = source
        self.user_model = model
        self.task_params = task_params
        if model is not None and not (isinstance(model, nn.Module) or callable(model)):
            raise ConfigError(f"model must be a torch.nn.Module or a callable returning one, got {type(model).__name__}")
        self._data: FederatedData | None = None

    @functools.cached_property
    def tracking(self) -> Tracking:
        """The run's tracking: the config's ``tracking`` backends, then callbacks added with :meth:`add_callback`."""
        return Tracking(build_callbacks(self.config.tracking))

    def add_callback(self, callback: Callback) -> Experiment:
        """Call ``callback`` (a :class:`fedmtl.tracking.Callback`) once per round of :meth:`run`; returns self."""
        self.tracking.callbacks.append(callback)
        return self

    @property
    def data(self) -> FederatedData:
        if self._data is None:
            self._data = build_federated_data(self.config.data, self.config.seed, self.source)
        return self._data

    def build_model(self) -> MultiTaskModel:
        """A fresh model of this experiment's architecture (the user's, when one was given) for its data."""
        data = self.data
        if self.user_model is None:
            return build_model(self.config.model, data.input_shape, data.tasks)
        given = copy.deepcopy(self.user_model) if isinstance(self.user_model, nn.Module) else self.user_model
        return as_model(given, data.input_shape, data.tasks, self.task_params)

    def _run_dir(self, resume: str | Path | None) -> Path:
        if resume is not None:
            run_dir = Path(resume)
            if not run_dir.is_dir():
                raise CheckpointError(f"cannot resume: {str(run_dir)!r} is not a run folder")
            check_resumable(run_dir, self.config)
            return run_dir
        out = self.config.output
        name = out.name or datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out.dir) / name
        if (run_dir / "checkpoints").exists():
            remove_stale_temps(run_dir / "checkpoints")  # an interrupted write's leftovers are not a run
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            if not out.overwrite:
                raise ConfigError(
                    f"run folder {str(run_dir)!r} already holds a run; resume it with --resume {run_dir}, "
                    "choose another output.name, or set output.overwrite=true to start afresh"
                )
            for name in RUN_OUTPUTS:  # only what a run writes: other files in the folder are the user's
                path = run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    def run(self, resume: str | Path | None = None, progress: bool = True) -> Results:
        """Run (or continue) the experiment and return its results.

        The rounds run in process (:class:`~fedmtl.runloop.simulation.Simulation`) under the run loop every
        fedmtl run shares (:func:`~fedmtl.runloop.loop.run_rounds`: resume, evaluation, metrics, checkpoints,
        summary); this builds what it needs and renders the plots and report.
        """
        cfg = self.config
        if cfg.runtime.threads is not None:
            torch.set_num_threads(cfg.runtime.threads)
        try:
            device = resolve_device(cfg.runtime.device)  # before anything is written or trained
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        run_dir = self._run_dir(resume)
        fed = make_federation(cfg, self.data, self.build_model(), str(device))
        rounds: Rounds = fed if cfg.systems is None else build_systems(cfg.systems, fed)  # the simulated clock drives the rounds
        # under torchrun every rank runs the rounds; rank 0 alone writes the run folder
        writes = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
        outcome = run_rounds(
            Simulation(fed, rounds, str(device)),
            cfg,
            run_dir,
            resume=resume is not None,
            writes=writes,
            progress=Bar() if progress and writes else None,
            on_record=lambda record: self.tracking.on_round(run_dir, cfg, record),
            resume_hint=f"fedmtl run --resume {run_dir}",
        )
        if writes and cfg.output.plots:
            render_report(run_dir)
        return Results(run_dir, outcome.summary, outcome.history, outcome.state.params)
