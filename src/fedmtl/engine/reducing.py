"""The streamed reduction: a transport of the one round driver that reduces updates as they are produced.

The plain round (:meth:`Federation.round <fedmtl.fl.federation.Federation.round>` over
:class:`~fedmtl.fl.transport.InProcess`) keeps every client's result, payload and decoded update of a
round in memory, then stacks them per group: O(cohort x parameters). When the aggregator is the
weighted mean, the aggregate is ``sum_i w_i u_i / sum_i w_i`` per group, and both sums can be
accumulated one chunk of clients at a time and, across ``torchrun`` ranks, added with one
``all_reduce``. :class:`Streamed` does exactly that, with the federation's own steps in the same order
per client (plan, decode, train, encode, decode, weigh), planning each chunk on its own (a whole
cohort's plan with downlink differences would hold every client's payload), and hands the driver the
sums (:class:`~fedmtl.fl.transport.Reduced`); the driver takes the same server step as the plain round.
Other rounds (an aggregator that needs every update at once, privacy, attackers, an algorithm with a
server step) the driver plans whole and :meth:`Streamed.deliver` runs in process: here, or across ranks
by all-gathering the trained results (:func:`fedmtl.engine.distributed.gathered`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor

from fedmtl.data.dataset import ClientData
from fedmtl.engine.distributed import gathered, rank_slice
from fedmtl.fl.aggregation import weighted_mean
from fedmtl.fl.algorithm import Algorithm, FedAvg
from fedmtl.fl.client import LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.federation import Federation, RoundPlan, ServerState
from fedmtl.fl.transport import Delivery, InProcess, Reduced
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL

if TYPE_CHECKING:
    from fedmtl.engine.one_step import OneStepResult
    from fedmtl.engine.stacked import StackedResult

log = logging.getLogger("fedmtl")


@dataclass
class RoundSums:
    """What a streamed round accumulates, client by client: per group ``sum_i w_i u_i`` and ``sum_i w_i``,
    per task the training-loss sum and count, the bytes down and up, and each client's new state.

    The tensors are float64 so that chunk order and rank count do not change the sums; :meth:`all_reduce`
    adds them across ``torchrun`` ranks in one collective.
    """

    names_of: dict[str, list[str]]
    sizes: dict[str, int]
    tasks: list[str]
    sums: dict[str, Tensor] = field(init=False)
    weights: Tensor = field(init=False)
    loss_sum: Tensor = field(init=False)
    loss_count: Tensor = field(init=False)
    bytes: Tensor = field(init=False)  # [down, up]
    client_states: dict[int, ClientState] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sums = {g: torch.zeros(self.sizes[g], dtype=torch.float64) for g in self.names_of}
        self.weights = torch.zeros(len(self.names_of), dtype=torch.float64)
        self.loss_sum = torch.zeros(len(self.tasks), dtype=torch.float64)
        self.loss_count = torch.zeros(len(self.tasks), dtype=torch.float64)
        self.bytes = torch.zeros(2, dtype=torch.float64)

    def add_update(self, update: ClientUpdate) -> None:
        """One decoded update: its weighted delta per group it carries, and its training losses."""
        for gi, (g, ns) in enumerate(self.names_of.items()):
            present = [n in update.delta for n in ns]
            if any(present) and not all(present):
                raise ValueError(f"clients [{update.client_id}] sent only part of parameter group {g!r}")
            w = update.weight_for(g)
            if all(present) and ns and w > 0:
                self.sums[g] += w * torch.cat([update.delta[n].reshape(-1) for n in ns]).double()
                self.weights[gi] += w
        for ti, t in enumerate(self.tasks):
            if f"loss/{t}" in update.metrics:
                self.loss_sum[ti] += update.metrics[f"loss/{t}"]
                self.loss_count[ti] += 1

    def all_reduce(self, world: int) -> None:
        """Add every rank's sums (one collective) and gather every rank's client states and drops."""
        flat = torch.cat([*self.sums.values(), self.weights, self.loss_sum, self.loss_count, self.bytes])
        on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        flat = flat.cuda() if on_gpu else flat
        dist.all_reduce(flat)  # every rank gets the cohort's sums
        parts = flat.cpu().split_with_sizes([*self.sizes.values(), len(self.weights), len(self.tasks), len(self.tasks), 2])
        self.sums = dict(zip(self.names_of, parts[: len(self.sizes)]))
        self.weights, self.loss_sum, self.loss_count, self.bytes = parts[len(self.sizes) :]
        gathered: list[tuple[dict[int, ClientState], dict[int, str]]] = [({}, {})] * world
        dist.all_gather_object(gathered, (self.client_states, self.dropped))
        self.client_states, self.dropped = {}, {}
        for states, drops in gathered:
            self.client_states.update(states)
            self.dropped.update(drops)

    def aggregate(self, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
        """The weighted mean delta of every parameter of every group somebody sent."""
        out: dict[str, Tensor] = {}
        for gi, (g, ns) in enumerate(self.names_of.items()):
            if self.weights[gi] <= 0:
                continue
            flat_g = (self.sums[g] / self.weights[gi]).to(torch.float32)
            offset = 0
            for n in ns:
                k = shapes[n].numel()
                out[n] = flat_g[offset : offset + k].view(shapes[n])
                offset += k
        return out

    def train_loss(self) -> dict[str, float]:
        return {t: float(self.loss_sum[i] / self.loss_count[i]) for i, t in enumerate(self.tasks) if self.loss_count[i] > 0}


@runtime_checkable
class Stacking(Protocol):
    """An engine that can hand back a chunk's trained parameters still stacked (the vectorised one), so that the
    streamed round reduces them with one matrix-vector product per tensor instead of unstacking each client."""

    def chunk_size(self, trainer: LocalTrainer) -> int: ...

    def run_stacked(self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]) -> StackedResult | OneStepResult | None: ...


class Streamed:
    """The streamed reduction as a transport of :meth:`Federation.round <fedmtl.fl.federation.Federation.round>`
    (:class:`~fedmtl.fl.transport.Reducing`): the cohort is planned, trained, encoded, decoded and reduced
    in chunks with the federation's own steps, and only the sums survive a chunk.

    ``Federation(cfg, data, model, engine, transport=Streamed)`` makes it a federation's default transport
    (what :func:`fedmtl.engine.make_federation` builds); ``functools.partial(Streamed, chunk_clients=...)``
    sets its options.

    Args:
        fed: the federation whose steps and clients it runs.
        chunk_clients: clients planned, trained, encoded and reduced at a time (bounds the round's memory).
        distributed: when True (and torch.distributed is initialised), this process trains only its
            rank's slice of the cohort and the sums are all-reduced; every rank ends the round with
            the same global model and the same client states.
    """

    def __init__(self, fed: Federation, chunk_clients: int = 1024, distributed: bool = False) -> None:
        self.fed = fed
        self.chunk_clients = chunk_clients
        self.distributed = distributed and dist.is_available() and dist.is_initialized()
        self._fast: tuple[Engine, bool] | None = None  # (engine, _stacked_path()): its inputs never change
        self._bytes_cache: dict[tuple[str, ...], int] = {}

    def streams(self) -> bool:
        """Whether this round may stream and reduce: a weighted mean with nothing that needs every update.

        Privacy (DP clipping, secure aggregation, DP-SGD's per-client epsilon), simulated attackers and algorithms with a server step
        (SCAFFOLD, IFCA, FedEM, MOCHA) need the full round: the driver plans it whole and calls :meth:`deliver`.
        """
        fed = self.fed
        return (
            fed.aggregator is weighted_mean
            and fed.privacy is None
            and fed.trainer.dp_sgd is None
            and not fed.byzantine
            and type(fed.algorithm).server_init is FedAvg.server_init
            and type(fed.algorithm).server_update is FedAvg.server_update
        )

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery:
        """A round that is not reduced: the clients train in process (across ranks: each its slice, the trained
        results all-gathered, so that every rank runs the same plain round)."""
        return (gathered(self.fed) if self.distributed else InProcess(self.fed)).deliver(state, plan)

    def reduce(self, state: ServerState, cohort: Sequence[int]) -> Reduced | None:
        """Plan, train, upload and collect ``cohort`` (this rank's slice of it) chunk by chunk, reducing each
        chunk's updates into :class:`RoundSums`; ``None`` when the round may not stream (:meth:`streams`)."""
        if not self.streams():
            return None
        fed = self.fed
        if fed.engine is None:
            raise RuntimeError("this round has no engine; pass one to simulate rounds")
        engine = fed.engine
        r = state.round
        rank, world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        mine = rank_slice(cohort, rank, world)
        names_of = {g: list(ns) for g, ns in fed.groups.items()}
        sizes = {g: sum(fed.shapes[n].numel() for n in ns) for g, ns in names_of.items()}
        acc = RoundSums(names_of, sizes, [t.name for t in fed.data.tasks])
        if self._fast is None or self._fast[0] is not engine:
            self._fast = (engine, self._stacked_path(engine))
        stacking = engine if self._fast[1] and isinstance(engine, Stacking) else None
        step = min(self.chunk_clients, stacking.chunk_size(fed.trainer)) if stacking is not None else self.chunk_clients
        for lo in range(0, len(mine), step):
            chunk = mine[lo : lo + step]
            plan = fed.plan(state, chunk)
            jobs, starts = fed.jobs(state, plan)
            acc.bytes[0] += plan.bytes_down
            stacked = stacking.run_stacked(fed.algorithm, fed.trainer, jobs) if stacking is not None else None
            if stacked is not None:
                self._reduce_stacked(chunk, state.params, stacked, acc, r)
                continue
            results = engine.run_cohort(fed.algorithm, fed.trainer, jobs)
            replies, states = fed.uploads(state, jobs, starts, results)
            acc.client_states.update(states)
            acc.bytes[1] += sum(len(reply.payload) for reply in replies)
            updates, bad = fed.collect(replies, state)
            acc.dropped.update(bad)
            for update in updates:
                acc.add_update(update)
            del results, jobs, starts, stacked, replies, updates
        if self.distributed:
            acc.all_reduce(world)
        return Reduced(acc.aggregate(fed.shapes), acc.client_states, acc.dropped, acc.train_loss(), int(acc.bytes[0]), int(acc.bytes[1]))

    def _stacked_path(self, engine: Engine) -> bool:
        """Whether updates can be reduced straight from the engine's stacked parameters.

        Needs an engine with ``run_stacked`` (the vectorised one) and identity links both ways (then a
        client's start is the global model and the decoded update is exactly ``trained - global``), and
        an algorithm that uploads every held, non-local parameter.
        """
        fed = self.fed
        if not isinstance(engine, Stacking):
            return False
        for link in (fed.up, fed.down):
            codecs = getattr(link, "codecs", None)
            if link.stateful or not codecs or any(getattr(c, "name", None) != "identity" for c in codecs):
                return False
        for client in {c.tasks: c for c in fed.data.clients}.values():
            layout = fed.layouts.of(client)
            if layout.uploaded != tuple(n for n in layout.held if fed.model.group_of(n) != LOCAL):
                return False
        return True

    def _payload_bytes(self, client: ClientData) -> int:
        """Uplink bytes of this client's update: identity payload sizes depend only on names and shapes,
        so they are encoded once per task set."""
        if client.tasks not in self._bytes_cache:
            fed = self.fed
            names = fed.layouts.of(client).uploaded
            payload, _ = fed.up.encode({n: torch.zeros(fed.shapes[n]) for n in names}, {}, None)
            self._bytes_cache[client.tasks] = len(payload)
        return self._bytes_cache[client.tasks]

    def _reduce_stacked(self, chunk: Sequence[int], params: Mapping[str, Tensor], stacked: StackedResult | OneStepResult, acc: RoundSums, r: int) -> None:
        """Add a stacked chunk's weighted deltas to the group sums: one matrix-vector product per group."""
        fed = self.fed
        names_of = acc.names_of
        C = len(chunk)
        clients = [fed.data.clients[cid] for cid in chunk]
        col = {t: i for i, t in enumerate(stacked.tasks)}
        groups: list[tuple[int, str, list[str], Tensor]] = []
        for gi, (g, ns) in enumerate(names_of.items()):
            if not ns:
                continue
            if g.startswith("task:"):
                t = g[5:]
                if t not in col:
                    continue
                holds = (stacked.held[:, col[t]] > 0).to(torch.float32)
                w = torch.tensor([float(c.train.y[t].shape[0]) if t in c.tasks else 0.0 for c in clients])
            else:
                holds = torch.ones(C)
                w = torch.tensor([float(c.num_train) for c in clients])
            groups.append((gi, g, ns, w * holds))
        # sum_c w_c (p_c - g) = sum_c w_c p_c - (sum_c w_c) g: one matrix-vector product per tensor, no delta copies
        ok = torch.ones(C)
        for _attempt in range(2):
            partial: dict[str, tuple[int, Tensor, float]] = {}
            for gi, g, ns, wc in groups:
                wk = wc * ok
                parts = [stacked.weighted_sum(n, wk) - float(wk.sum()) * params[n].reshape(-1) for n in ns]
                partial[g] = (gi, torch.cat(parts), float(wk.sum()))
            if all(bool(torch.isfinite(v[1]).all()) for v in partial.values()):
                break
            # a non-finite update: find its client(s) exactly, drop them as the decoder would, and redo the sums
            for _gi, _g, ns, wc in groups:
                for n in ns:
                    bad = stacked.nonfinite_rows(n) & (wc > 0)
                    ok[bad] = 0.0
        for g, (gi, total, wtot) in partial.items():
            acc.sums[g] += total.double()
            acc.weights[gi] += wtot
        for c, cid in enumerate(chunk):
            acc.client_states[cid] = stacked.state(fed.model, c)
        acc.bytes[1] += sum(self._payload_bytes(client) for client in clients)
        for c in (ok == 0).nonzero().flatten().tolist():
            acc.dropped[chunk[c]] = "payload carries NaN or Inf"
            log.warning("round %d: dropped client %d's update: payload carries NaN or Inf", r, chunk[c])
        finite = ok > 0
        for ti, t in enumerate(acc.tasks):
            if t in col:
                m = (stacked.held[:, col[t]] > 0) & finite
                acc.loss_sum[ti] += float(stacked.loss_mean[m, col[t]].sum())
                acc.loss_count[ti] += float(m.sum())
