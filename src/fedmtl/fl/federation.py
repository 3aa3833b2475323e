"""One federated round, end to end: sample, broadcast, train, encode, decode, aggregate, step.

The round is composed from small parts (algorithm, engine, links, aggregator, server optimiser);
it owns the order of the steps and the bookkeeping (bytes, dropped clients), not their maths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedmtl.comm import PayloadError, build_link
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.data.dataset import FederatedData
from fedmtl.fl.aggregation import aggregate_by_group, build_aggregator
from fedmtl.fl.algorithm import Algorithm, build_algorithm
from fedmtl.fl.client import LocalTrainer
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.sampling import cohort_size, sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.fl.server_opt import build_server_optimizer
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL, MultiTaskModel
from fedmtl.tree import TensorTree

log = logging.getLogger("fedmtl")


@dataclass
class ServerState:
    """Everything a run needs to continue: the global model, optimiser state, each client's state."""

    round: int
    params: dict[str, Tensor]
    opt_state: TensorTree
    client_states: dict[int, TensorTree] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundReport:
    """What happened in one round."""

    round: int
    cohort: list[int]
    dropped: dict[int, str]
    bytes_down: int
    bytes_up: int
    train_loss: dict[str, float]
    seconds: float


def initial_parameters(model: MultiTaskModel, seed: int) -> dict[str, Tensor]:
    """Re-initialise ``model`` under ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()  # type: ignore[operator]
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Federation:
    """The server's round logic over a fixed federation of clients."""

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, model: MultiTaskModel, engine: Engine):
        self.cfg = cfg
        self.data = data
        self.model = model
        self.engine = engine
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm)
        self.trainer = LocalTrainer(model, cfg.client, cfg.mtl)
        self.down = build_link(cfg.comm.downlink)
        self.up = build_link(cfg.comm.uplink)
        self.aggregator = build_aggregator(cfg.server.aggregator)
        self.server_opt = build_server_optimizer(cfg.server.optimizer)
        self.groups = {g: names for g, names in model.param_groups().items() if g != LOCAL}
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        self.cohort_size = cohort_size(data.num_clients, cfg.server.clients_per_round, cfg.server.fraction)

    def init_state(self) -> ServerState:
        params = initial_parameters(self.model, self.cfg.seed)
        return ServerState(round=0, params=params, opt_state=self.server_opt.init(params))

    def cohort(self, round_index: int) -> list[int]:
        return sample_cohort(self.data.num_clients, self.cohort_size, generator(self.cfg.seed, "cohort", round_index))

    def broadcast(self, params: Mapping[str, Tensor], cohort: Sequence[int], round_index: int) -> tuple[list[dict[str, Tensor]], int]:
        """Encode what each client needs (shared + its heads) and decode it as the client would.

        Clients with the same task set receive identical bytes, so each distinct payload is encoded once.
        """
        cache: dict[tuple[str, ...], tuple[dict[str, Tensor], int]] = {}
        starts, total = [], 0
        for cid in cohort:
            client = self.data.clients[cid]
            if client.tasks not in cache:
                names = self.algorithm.uploaded_names(self.model, client)
                payload, _ = self.down.encode({n: params[n] for n in names}, {}, generator(self.cfg.seed, "down", round_index))
                cache[client.tasks] = (self.down.decode(payload), len(payload))
            decoded, nbytes = cache[client.tasks]
            starts.append(decoded)
            total += nbytes
        return starts, total

    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]:
        """Run round ``state.round`` and return the next state (inputs are not mutated)."""
        t0 = time.perf_counter()
        r = state.round
        cohort = self.cohort(r)
        starts, bytes_down = self.broadcast(state.params, cohort, r)
        jobs = [
            CohortJob(
                start={**state.params, **start},
                client=self.data.clients[cid],
                state=state.client_states.get(cid, {}),
                generator=generator(self.cfg.seed, "client", r, cid),
            )
            for cid, start in zip(cohort, starts)
        ]
        results = self.engine.run_cohort(self.algorithm, self.trainer, jobs)
        client_states = dict(state.client_states)
        updates: list[ClientUpdate] = []
        dropped: dict[int, str] = {}
        bytes_up = 0
        for cid, job, start, res in zip(cohort, jobs, starts, results):
            client = job.client
            names = self.algorithm.uploaded_names(self.model, client)
            delta = {n: res.params[n] - start[n] for n in names}
            cstate = dict(res.state)
            payload, codec_state = self.up.encode(delta, cstate.get("codec", {}), generator(self.cfg.seed, "codec", r, cid))  # type: ignore[arg-type]
            if self.up.stateful:
                cstate["codec"] = codec_state
            client_states[cid] = cstate
            bytes_up += len(payload)
            try:
                received = self.up.decode(payload, expected={n: self.shapes[n] for n in names})
            except PayloadError as exc:
                dropped[cid] = str(exc)
                log.warning("round %d: dropped client %d's update: %s", r, cid, exc)
                continue
            task_rows = {t: int(client.train.y[t].shape[0]) for t in client.tasks}
            updates.append(ClientUpdate(cid, received, client.num_train, task_rows, res.metrics))
        params, opt_state = state.params, state.opt_state
        if updates:
            aggregate = aggregate_by_group(updates, self.groups, self.aggregator)
            params, opt_state = self.server_opt.step(state.params, aggregate, state.opt_state)
        loss: dict[str, list[float]] = {}
        for u in updates:
            for k, v in u.metrics.items():
                if k.startswith("loss/"):
                    loss.setdefault(k[5:], []).append(v)
        report = RoundReport(
            round=r,
            cohort=cohort,
            dropped=dropped,
            bytes_down=bytes_down,
            bytes_up=bytes_up,
            train_loss={t: sum(v) / len(v) for t, v in loss.items()},
            seconds=time.perf_counter() - t0,
        )
        return ServerState(r + 1, params, opt_state, client_states), report
