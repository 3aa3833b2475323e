"""The one run loop: resume, stop conditions, evaluation cadence, ``metrics.jsonl``, checkpoints, progress, summary.

Every way fedmtl runs rounds goes through :func:`run_rounds`: the in-process simulation
(:class:`~fedmtl.runloop.simulation.Simulation`, what :class:`fedmtl.Experiment` runs) and the Flower
deployment (:class:`~fedmtl.integrations.flower.strategy.FlowerServer`). What differs between them is
how a round reaches its clients and how the clients' personalised models are evaluated; that is the
:class:`RoundRunner` each brings. Everything a run folder holds is written here, the same way for both
(the template-method shape of Flower's own ``Strategy.start``: the loop owns the rounds, runners fill hooks).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from fedmtl.atomic import atomic_write_text, remove_stale_temps
from fedmtl.config import ExperimentConfig, dump_config
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.federation import ServerState
from fedmtl.report import MetricsLog
from fedmtl.runloop.checkpoint import (
    check_algorithm_state,
    check_resumable,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)
from fedmtl.runloop.evaluation import global_model_note
from fedmtl.runloop.progress import Progress

log = logging.getLogger("fedmtl")


class RoundResult(NamedTuple):
    """One round's outcome: the next state and its ``metrics.jsonl`` record (before evaluation and ``elapsed``).

    A tuple, so ``state, record = runner.run_round(state)`` reads it.
    """

    state: ServerState
    record: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation adds to its round's record (``global``, ``personalized``, ...), and the per-client
    rows of the personalised evaluation (``clients.json`` after the last round; empty when there are none)."""

    record: dict[str, Any]
    clients: list[dict[str, Any]] = field(default_factory=list)


class RoundRunner(Protocol):
    """How a run's rounds reach the clients (the transport): the loop asks it for nothing else.

    Attributes:
        engine: what ran the rounds, in words (``summary.json``'s ``engine``).
        algorithm: the run's algorithm (whether it trains a global model decides the summary's note).
    """

    @property
    def engine(self) -> str: ...

    @property
    def algorithm(self) -> Algorithm: ...

    def init_state(self) -> ServerState:
        """The state before round 1 (also what a restored checkpoint's algorithm state is checked against)."""
        ...

    def start(self, state: ServerState) -> None:
        """Get ready to run from ``state`` (restored or fresh): Flower's run key and nodes, the engine's log line."""
        ...

    def stop_reason(self, state: ServerState) -> str:
        """Why no further round may run ("" when one may)."""
        ...

    def can_run_round(self, state: ServerState) -> bool:
        """False when the privacy budget forbids another round (the loop then checkpoints at once)."""
        ...

    def run_round(self, state: ServerState) -> RoundResult:
        """Run round ``state.round + 1``; inputs are not mutated."""
        ...

    def evaluate(self, state: ServerState) -> Evaluation:
        """The global and (when configured) personalised evaluation of ``state``."""
        ...

    def summary(self, state: ServerState, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """What this runner adds to ``summary.json`` (it may refine ``engine``)."""
        ...


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_rounds` returns: the last state, ``metrics.jsonl``'s records and ``summary.json``."""

    state: ServerState
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def start_state(
    runner: RoundRunner, cfg: ExperimentConfig, run_dir: Path, metrics: MetricsLog, resume: bool, writes: bool = True
) -> tuple[ServerState, float]:
    """The state the run continues from and the wall seconds already spent: the newest intact checkpoint when
    ``resume`` (its metrics past that round dropped), else the runner's initial state (and an empty log).

    Only the process that ``writes`` the run folder tidies it (the other torchrun ranks read the same folder)."""
    if resume and writes:
        remove_stale_temps(run_dir / "checkpoints")
    if resume and list_checkpoints(run_dir):
        check_resumable(run_dir, cfg)
        state, meta = load_latest(run_dir)
        check_algorithm_state(state, runner.init_state().algorithm_state, cfg.algorithm.name)
        if writes:
            metrics.truncate_after(state.round)
        log.info("resuming %s from round %d", run_dir, state.round)
        return state, float(meta.get("elapsed", 0.0))
    if resume:  # a run killed before its first checkpoint: round 0 is where it resumes
        log.info("resuming %s: no checkpoint was written yet, starting from round 0", run_dir)
    if writes:
        metrics.truncate_after(0)
    return runner.init_state(), 0.0


def run_rounds(
    runner: RoundRunner,
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    writes: bool = True,
    progress: Progress | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    resume_hint: str = "",
) -> RunOutcome:
    """Run (or continue) ``cfg.server.rounds`` rounds with ``runner`` and write the run folder.

    Per round: stop when the runner gives a reason (privacy budget, no client left online); run the round;
    evaluate every ``evaluation.every`` rounds and after the last; append the record (with the wall
    seconds so far, ``elapsed``) to ``metrics.jsonl``; checkpoint every ``output.checkpoint_every`` rounds,
    after the last, and when no further round may run. At the end: ``summary.json`` and ``clients.json``.

    Args:
        resume: continue from the newest checkpoint in ``run_dir`` (from round 0 when there is none).
        writes: whether this process writes the run folder (under torchrun only rank 0 does; every rank runs).
        progress: shows the rounds as they finish (a bar, log lines); nothing by default.
        on_record: called with each round's record after it is written (tracking callbacks).
        resume_hint: how to resume, logged when the run is interrupted.
    """
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    state, elapsed = start_state(runner, cfg, run_dir, metrics, resume, writes)
    if writes:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    runner.start(state)
    total = cfg.server.rounds
    final_clients: list[dict[str, Any]] = []
    stopped = ""
    if progress is not None:
        progress.start(min(state.round, total), total)
    try:
        while state.round < total:
            stopped = runner.stop_reason(state)
            if stopped:
                log.warning("stopping after round %d: %s", state.round, stopped)
                break
            t0 = time.perf_counter()
            state, record = runner.run_round(state)
            if state.round % cfg.evaluation.every == 0 or state.round == total:
                evaluation = runner.evaluate(state)
                record.update(evaluation.record)
                if state.round == total:
                    final_clients = evaluation.clients
            elapsed += time.perf_counter() - t0
            record["elapsed"] = elapsed
            if writes:
                metrics.append(record)
                if on_record is not None:
                    on_record(record)
            due = state.round % cfg.output.checkpoint_every == 0 or state.round == total
            if writes and (due or not runner.can_run_round(state)):
                save_checkpoint(run_dir, state, {"elapsed": elapsed}, keep=cfg.output.keep_checkpoints)
            if progress is not None:
                progress.update(record)
    except KeyboardInterrupt:
        log.warning("interrupted at round %d; resume with: %s", state.round, resume_hint or str(run_dir))
        raise
    finally:
        if progress is not None:
            progress.close()
    history = metrics.read()
    summary = summarize(runner, cfg, state, history, elapsed)
    if stopped:
        summary["stopped_early"] = stopped
    if writes:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        if final_clients:  # the last round's per-client personalised scores
            atomic_write_text(run_dir / "clients.json", json.dumps(final_clients, indent=1))
    return RunOutcome(state, history, summary)


def summarize(
    runner: RoundRunner, cfg: ExperimentConfig, state: ServerState, history: Sequence[Mapping[str, Any]], elapsed: float
) -> dict[str, Any]:
    """``summary.json``: the last evaluation, totals over ``metrics.jsonl`` and what the runner adds."""
    last_eval: Mapping[str, Any] = next((r for r in reversed(history) if r.get("global") is not None), {})
    out: dict[str, Any] = {
        "privacy": next((r["privacy"] for r in reversed(history) if r.get("privacy")), None),
        "rounds_completed": state.round,
        "engine": runner.engine,
        "wall_seconds": elapsed,
        **({"virtual_time": history[-1]["virtual_time"]} if history and "virtual_time" in history[-1] else {}),
        "bytes_down_total": sum(r.get("bytes_down", 0) for r in history),
        "bytes_up_total": sum(r.get("bytes_up", 0) for r in history),
        "final_global": last_eval.get("global", {}),
        "final_personalized": last_eval.get("personalized", {}),
        **runner.summary(state, history),
        "seed": cfg.seed,
    }
    note = global_model_note(runner.algorithm)
    if note:
        out["global_model"] = note
    return out


__all__ = ["Evaluation", "RoundResult", "RoundRunner", "RunOutcome", "run_rounds", "start_state", "summarize"]
