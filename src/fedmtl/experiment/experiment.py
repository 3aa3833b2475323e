"""``Experiment``: build everything from a config, run the rounds, write the run folder, resume.

The run folder holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (a line per round),
``summary.json``, PNG plots, ``report.html`` and ``checkpoints/``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmtl._extras import require
from fedmtl.atomic import atomic_write_text, remove_stale_temps
from fedmtl.config import ConfigError, ExperimentConfig, config_from_dict, dump_config, load_config
from fedmtl.data import FederatedData, SourceData, build_federated_data
from fedmtl.engine import make_federation
from fedmtl.engine.device import DeviceError, resolve_device
from fedmtl.fl.client import load_parameters, mean_buffers
from fedmtl.fl.federation import Federation, RoundReport, ServerState
from fedmtl.fl.systems import Rounds, build_systems
from fedmtl.mtl import MultiTaskModel, build_model
from fedmtl.mtl.factory import as_model
from fedmtl.report import MetricsLog, render_report
from fedmtl.report.metrics_log import flatten
from fedmtl.runloop.checkpoint import (
    CheckpointError,
    check_algorithm_state,
    check_resumable,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)
from fedmtl.runloop.evaluation import evaluate_global, evaluate_personalized, global_model_note
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
        self._final_clients: list[dict[str, Any]] = []

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
        """Run (or continue) the experiment and return its results."""
        cfg = self.config
        if cfg.runtime.threads is not None:
            torch.set_num_threads(cfg.runtime.threads)
        try:
            device = resolve_device(cfg.runtime.device)  # before anything is written or trained
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        run_dir = self._run_dir(resume)
        data = self.data
        model = self.build_model()
        fed = make_federation(cfg, data, model, str(device))
        rounds: Rounds = fed if cfg.systems is None else build_systems(cfg.systems, fed)  # the simulated clock drives the rounds
        # under torchrun every rank runs the rounds; rank 0 alone writes the run folder
        writes = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
        metrics = MetricsLog(run_dir / "metrics.jsonl")
        if resume is not None:
            remove_stale_temps(run_dir / "checkpoints")
        if resume is not None and list_checkpoints(run_dir):
            state, meta = load_latest(run_dir)
            check_algorithm_state(state, rounds.init_state().algorithm_state, cfg.algorithm.name)
            metrics.truncate_after(state.round)
            elapsed = float(meta.get("elapsed", 0.0))
            log.info("resuming %s from round %d", run_dir, state.round)
        else:  # a new run, or one killed before its first checkpoint: round 0 is where it resumes
            if resume is not None:
                log.info("resuming %s: no checkpoint was written yet, starting from round 0", run_dir)
            state = rounds.init_state()
            metrics.truncate_after(0)
            elapsed = 0.0
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        log.info("engine: %s on %s; %d clients, cohort %d, %d rounds", engine_label(fed), device, data.num_clients, fed.cohort_size, cfg.server.rounds)

        bar = None
        if progress and writes:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.server.rounds, initial=min(state.round, cfg.server.rounds), desc="rounds", unit="round", dynamic_ncols=True)
        shown = ""
        stopped = ""
        try:
            while state.round < cfg.server.rounds:
                stopped = rounds.stop_reason(state)
                if stopped:
                    log.warning("stopping after round %d: %s", state.round, stopped)
                    break
                t0 = time.perf_counter()
                state, report = rounds.round(state)
                record = self._record(fed, state, report)
                elapsed += time.perf_counter() - t0
                record["elapsed"] = elapsed
                if writes:
                    metrics.append(record)
                    self.tracking.on_round(run_dir, cfg, record)
                due = state.round % cfg.output.checkpoint_every == 0 or state.round == cfg.server.rounds
                if writes and (due or not rounds.can_run_round(state)):
                    save_checkpoint(run_dir, state, {"elapsed": elapsed}, keep=cfg.output.keep_checkpoints)
                if bar is not None:
                    if record.get("global") is not None:
                        shown = self._postfix(record)
                    bar.update(1)
                    bar.set_postfix_str(f"{shown} up={record['bytes_up'] / 1e6:.1f}MB/round")
        except KeyboardInterrupt:
            log.warning("interrupted at round %d; resume with: fedmtl run --resume %s", state.round, run_dir)
            raise
        finally:
            if bar is not None:
                bar.close()
        history = metrics.read()
        summary = self._summary(fed, state, history, engine_label(fed), elapsed)
        if not writes:
            return Results(run_dir, summary, history, state.params)
        if stopped:
            summary["stopped_early"] = stopped
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        if self._final_clients:
            atomic_write_text(run_dir / "clients.json", json.dumps(self._final_clients, indent=1))
        if cfg.output.plots:
            render_report(run_dir)
        return Results(run_dir, summary, history, state.params)

    def _record(self, fed: Federation, state: ServerState, report: RoundReport) -> dict[str, Any]:
        cfg = self.config
        engine_name = engine_label(fed)
        record: dict[str, Any] = {
            "round": state.round,
            "cohort_size": len(report.cohort),
            "dropped": report.dropped,
            "bytes_down": report.bytes_down,
            "bytes_up": report.bytes_up,
            "train_loss": report.train_loss,
            "round_seconds": report.seconds,
            "engine": engine_name,
            **report.systems,  # virtual_time (simulated seconds) beside round_seconds; FedBuff's staleness
        }
        last_run = getattr(fed.engine, "last_run", None)
        if last_run:
            record["engine_clients"] = dict(last_run)
        if report.algorithm_bytes_down or report.algorithm_bytes_up:
            # included in bytes_down / bytes_up: the algorithm's server state and the clients' outboxes
            record["algorithm_bytes_down"] = report.algorithm_bytes_down
            record["algorithm_bytes_up"] = report.algorithm_bytes_up
        if report.privacy:
            record["privacy"] = report.privacy
        if report.skipped:
            record["skipped"] = report.skipped
        due = state.round % cfg.evaluation.every == 0 or state.round == cfg.server.rounds
        if due:
            bn = mean_buffers(fed.model, list(state.client_states.values()))  # BatchNorm trunks only; else {}
            record["global"] = evaluate_global(fed.model, state.params, fed.data, cfg.evaluation.batch_size, bn, fed.algorithm)
            if cfg.evaluation.personalized:
                # each client's own state plus the server state it would receive now (IFCA re-picks its cluster)
                views = fed.server_views(state, range(fed.data.num_clients))
                client_states = {c: fed.client_view(state, c, views.get(c)) for c in range(fed.data.num_clients)}
                summary, rows = evaluate_personalized(
                    fed.model, fed.algorithm, state.params, fed.data, client_states, cfg.evaluation.batch_size
                )
                record["personalized"] = summary
                if state.round == cfg.server.rounds:
                    self._final_clients = rows
        return record

    @staticmethod
    def _postfix(record: dict[str, Any]) -> str:
        parts = []
        for task, m in (record.get("global") or {}).items():
            key = "accuracy" if "accuracy" in m else "r2"
            parts.append(f"{task}={m[key]:.3f}" if m.get(key) is not None else f"{task}=n/a")  # None: not finite
        if not record.get("global"):  # no global model (local): the personalised models' pooled scores
            for task, p in (record.get("personalized") or {}).items():
                m = p.get("pooled") or {}
                key = "accuracy" if "accuracy" in m else "r2"
                parts.append(f"{task}={m[key]:.3f} (pers)" if m.get(key) is not None else f"{task}=n/a (pers)")
        if "epsilon" in (record.get("privacy") or {}):
            parts.append(f"ε={record['privacy']['epsilon']:.2f}")
        return " ".join(parts)

    def _summary(self, fed: Federation, state: ServerState, history: list[dict[str, Any]], engine: str, elapsed: float) -> dict[str, Any]:
        last_eval: dict[str, Any] = next((r for r in reversed(history) if r.get("global") is not None), {})
        privacy = next((r["privacy"] for r in reversed(history) if r.get("privacy")), None)
        counts: dict[str, int] = {}
        for r in history:
            for name, n in (r.get("engine_clients") or {}).items():
                counts[name] = counts.get(name, 0) + int(n)
        fallback = sorted(getattr(fed.engine, "fallback_reasons", ()))
        out: dict[str, Any] = {
            "privacy": privacy,
            "rounds_completed": state.round,
            "engine": engine_summary(engine, counts),
            "engine_clients": counts,
            "engine_fallback": fallback,
            "wall_seconds": elapsed,
            **({"virtual_time": history[-1]["virtual_time"]} if history and "virtual_time" in history[-1] else {}),
            "bytes_down_total": sum(r.get("bytes_down", 0) for r in history),
            "bytes_up_total": sum(r.get("bytes_up", 0) for r in history),
            "final_global": last_eval.get("global", {}),
            "final_personalized": last_eval.get("personalized", {}),
            "data": fed.data.summary(),
            "data_cleaning": fed.data.cleaning.as_dict() if fed.data.cleaning is not None else None,
            "seed": self.config.seed,
        }
        note = global_model_note(fed.algorithm)
        if note:
            out["global_model"] = note
        return out


def engine_summary(label: str, counts: Mapping[str, int]) -> str:
    """What ran the clients' local training, in words: the engine, and how many client trainings each engine
    ran when some of them fell back (``counts``: engine name -> client trainings over the run)."""
    ran = {k: v for k, v in counts.items() if v}
    if len(ran) <= 1 and (not ran or next(iter(ran)) in label):
        return label
    return f"{label}: " + ", ".join(f"{n} client trainings {k}" for k, n in ran.items())


def engine_label(fed: Federation) -> str:
    """The engine's name, with the torchrun world size when ranks share the cohort."""
    name = fed.engine.name if fed.engine is not None else "none"
    if getattr(fed, "distributed", False):
        return f"distributed ({torch.distributed.get_world_size()} ranks, {name} per rank)"
    return name
