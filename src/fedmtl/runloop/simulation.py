"""The in-process transport of the run loop: rounds on an engine in this process (or across torchrun's ranks).

:class:`Simulation` is the :class:`~fedmtl.runloop.loop.RoundRunner` that :class:`fedmtl.Experiment` hands to
:func:`~fedmtl.runloop.loop.run_rounds`: its rounds are the federation's own (or a systems driver's on a
simulated clock), its clients' personalised models are evaluated here, on their test splits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedmtl.fl.client import mean_buffers
from fedmtl.fl.federation import Federation, ServerState
from fedmtl.fl.systems.driver import Rounds
from fedmtl.runloop.evaluation import evaluate_global, evaluate_personalized
from fedmtl.runloop.loop import Evaluation, RoundResult
from fedmtl.runloop.records import round_record

log = logging.getLogger("fedmtl")


def engine_label(fed: Federation) -> str:
    """The engine's name, with the torchrun world size when ranks share the cohort."""
    name = fed.engine.name if fed.engine is not None else "none"
    if getattr(fed.transport, "distributed", False):
        return f"distributed ({torch.distributed.get_world_size()} ranks, {name} per rank)"
    return name


def engine_summary(label: str, counts: Mapping[str, int]) -> str:
    """What ran the clients' local training, in words: the engine, and how many client trainings each engine
    ran when some of them fell back (``counts``: engine name -> client trainings over the run)."""
    ran = {k: v for k, v in counts.items() if v}
    if len(ran) <= 1 and (not ran or next(iter(ran)) in label):
        return label
    return f"{label}: " + ", ".join(f"{n} client trainings {k}" for k, n in ran.items())


class Simulation:
    """Rounds run in process: the federation's (:meth:`Federation.round` over its default transport, the
    streamed reduction of ``fedmtl.engine.reducing`` when built by ``make_federation``) or, with ``systems``,
    a driver's on the simulated clock.

    Args:
        fed: the federation (its model, data, algorithm and engine).
        rounds: what runs the rounds (default: ``fed`` itself; a :mod:`fedmtl.fl.systems` driver over it).
        device: where the engine computes (for the log).
    """

    def __init__(self, fed: Federation, rounds: Rounds | None = None, device: str = "cpu"):
        self.fed = fed
        self.rounds: Rounds = rounds if rounds is not None else fed
        self.cfg = fed.cfg
        self.algorithm = fed.algorithm
        self.engine = engine_label(fed)
        self.device = device

    def init_state(self) -> ServerState:
        return self.rounds.init_state()

    def start(self, state: ServerState) -> None:
        fed, cfg = self.fed, self.cfg
        log.info(
            "engine: %s on %s; %d clients, cohort %d, %d rounds",
            self.engine, self.device, fed.data.num_clients, fed.cohort_size, cfg.server.rounds,
        )

    def stop_reason(self, state: ServerState) -> str:
        return self.rounds.stop_reason(state)

    def can_run_round(self, state: ServerState) -> bool:
        return self.rounds.can_run_round(state)

    def run_round(self, state: ServerState) -> RoundResult:
        state, report = self.rounds.round(state)
        return RoundResult(state, round_record(state, report, self.engine, getattr(self.fed.engine, "last_run", None)))

    def evaluate(self, state: ServerState) -> Evaluation:
        """The global model on the server's hold-out (BatchNorm statistics: the mean of the clients' own) and,
        when configured, every client's personalised model on its own test split."""
        fed, cfg = self.fed, self.cfg
        bn = mean_buffers(fed.model, list(state.client_states.values()))  # BatchNorm trunks only; else {}
        record: dict[str, Any] = {
            "global": evaluate_global(fed.model, state.params, fed.data, cfg.evaluation.batch_size, bn, fed.algorithm)
        }
        if not cfg.evaluation.personalized:
            return Evaluation(record)
        # each client's own state plus the server state it would receive now (IFCA re-picks its cluster)
        everyone = range(fed.data.num_clients)
        views = fed.server_views(state, everyone)
        client_states = {c: fed.client_view(state, c, views.get(c)) for c in everyone}
        record["personalized"], rows = evaluate_personalized(
            fed.model, fed.algorithm, state.params, fed.data, client_states, cfg.evaluation.batch_size
        )
        return Evaluation(record, rows)

    def summary(self, state: ServerState, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The engine (and how many client trainings fell back to which), the data and its cleaning."""
        counts: dict[str, int] = {}
        for r in history:
            for name, n in (r.get("engine_clients") or {}).items():
                counts[name] = counts.get(name, 0) + int(n)
        data = self.fed.data
        return {
            "engine": engine_summary(self.engine, counts),
            "engine_clients": counts,
            "engine_fallback": sorted(getattr(self.fed.engine, "fallback_reasons", ())),
            "data": data.summary(),
            "data_cleaning": data.cleaning.as_dict() if data.cleaning is not None else None,
        }


__all__ = ["Simulation", "engine_label", "engine_summary"]
