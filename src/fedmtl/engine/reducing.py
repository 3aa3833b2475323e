"""A round that reduces updates as they are produced: bounded memory, and the torch.distributed collective.

:class:`fedmtl.fl.federation.Federation` keeps every client's result, payload and decoded update of a
round in memory, then stacks them per group: O(cohort x parameters). When the aggregator is the
weighted mean, the aggregate is ``sum_i w_i u_i / sum_i w_i`` per group, and both sums can be
accumulated one chunk of clients at a time and, across ``torchrun`` ranks, added with one
``all_reduce``. :class:`ReducingFederation` does exactly that, with the same steps in the same order
per client (broadcast, train, encode, decode, weigh) as the base round. Other aggregators (which
need every update at once) use the base round: locally as it is, across ranks by all-gathering the
decoded updates (:mod:`fedmtl.engine.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedmtl.config import ExperimentConfig
from fedmtl.data.dataset import ClientData, FederatedData
from fedmtl.engine.distributed import gathered_round, rank_slice
from fedmtl.fl.aggregation import weighted_mean
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.federation import Federation, RoundReport, ServerState
from fedmtl.fl.seeding import generator
from fedmtl.fl.transport import Transport
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL, MultiTaskModel

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


class ReducingFederation:
    """A round driver over a :class:`Federation` (composition, not a subclass): its round streams the cohort
    in chunks and reduces updates on the fly with the federation's own steps (plan, receive, collect),
    and hands every other round to the federation's. The rest of the federation's interface (``init_state``,
    ``evaluate``, its attributes) is the federation's, reached through this object.

    Args:
        chunk_clients: clients trained, encoded and reduced at a time (bounds the round's memory).
        distributed: when True (and torch.distributed is initialised), this process trains only its
            rank's slice of the cohort and the sums are all-reduced; every rank ends the round with
            the same global model and the same client states.
    """

    #: this driver's own attributes; every other attribute is the federation's (read and written there)
    _OWN = frozenset({"federation", "chunk_clients", "distributed", "reduces", "_fast", "_bytes_cache"})

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: FederatedData,
        model: MultiTaskModel,
        engine: Engine,
        chunk_clients: int = 1024,
        distributed: bool = False,
    ) -> None:
        self.federation = Federation(cfg, data, model, engine)
        self.chunk_clients = chunk_clients
        self.distributed = distributed and dist.is_available() and dist.is_initialized()
        self.reduces = self.aggregator is weighted_mean
        self._fast: bool | None = None  # _stacked_path(), decided on the first round (its inputs never change)
        self._bytes_cache: dict[tuple[str, ...], int] = {}

    def __getattr__(self, name: str) -> Any:
        if name in ReducingFederation._OWN:  # not set yet (during __init__): never the federation's
            raise AttributeError(name)
        return getattr(self.federation, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ReducingFederation._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.federation, name, value)

    @property
    def stepping_engine(self) -> Any:
        """The engine this round drives (chunk sizes and the stacked path are the vectorised engine's, when it is one)."""
        if self.engine is None:
            raise RuntimeError("this round has no engine; pass one to simulate rounds")
        return self.engine

    def streams(self) -> bool:
        """Whether this round may stream and reduce: a weighted mean with nothing that needs every update.

        Privacy (DP clipping, secure aggregation, DP-SGD's per-client epsilon), simulated attackers and algorithms with a server step
        (SCAFFOLD, IFCA, FedEM, MOCHA) need the full round; they take :meth:`Federation.round`.
        """
        from fedmtl.fl.algorithm import FedAvg

        return (
            self.reduces
            and self.privacy is None
            and self.trainer.dp_sgd is None
            and not self.byzantine
            and type(self.algorithm).server_init is FedAvg.server_init
            and type(self.algorithm).server_update is FedAvg.server_update
        )

    def round(self, state: ServerState, transport: Transport | None = None, **options: Any) -> tuple[ServerState, RoundReport]:
        """The federation's round, streamed when it may be (:meth:`streams`) and the clients train here.

        ``transport`` and ``options`` (a cohort, a quorum: :meth:`Federation.round`) go to the federation's
        round, which they change: a systems driver's clock, say.
        """
        if transport is not None or options or not self.streams():
            if self.distributed and transport is None:
                return gathered_round(self.federation, state, **options)
            return self.federation.round(state, transport, **options)
        t0 = time.perf_counter()
        r = state.round
        cohort = self.cohort(r)
        rank, world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        mine = rank_slice(cohort, rank, world)
        names_of = {g: list(ns) for g, ns in self.groups.items()}
        sizes = {g: sum(self.shapes[n].numel() for n in ns) for g, ns in names_of.items()}
        acc = RoundSums(names_of, sizes, [t.name for t in self.data.tasks])
        if self._fast is None:
            self._fast = self._stacked_path()
        fast = self._fast
        engine = self.stepping_engine
        step = min(self.chunk_clients, engine.chunk_size(self.trainer)) if fast else self.chunk_clients
        for lo in range(0, len(mine), step):
            chunk = mine[lo : lo + step]
            plan = self.plan(state, chunk)
            starts = self.receive_all(plan, chunk)
            acc.bytes[0] += plan.bytes_down
            jobs = [
                CohortJob(
                    start={**state.params, **start},
                    client=self.data.clients[cid],
                    state=state.client_state(cid),
                    generator=generator(self.cfg.seed, "client", r, cid),
                )
                for cid, start in zip(chunk, starts)
            ]
            stacked = engine.run_stacked(self.algorithm, self.trainer, jobs) if fast else None
            if stacked is not None:
                self._reduce_stacked(chunk, state.params, stacked, acc, r)
                continue
            results = engine.run_cohort(self.algorithm, self.trainer, jobs)
            replies = []
            for cid, job, start, res in zip(chunk, jobs, starts, results):
                reply, acc.client_states[cid] = self.node.upload(start, res, job.client, r, prior=job.state)
                acc.bytes[1] += len(reply.payload)
                replies.append(reply)
            updates, bad = self.collect(replies, state)
            acc.dropped.update(bad)
            for update in updates:
                acc.add_update(update)
            del results, jobs, starts, stacked, replies, updates
        if self.distributed:
            acc.all_reduce(world)
        aggregate = acc.aggregate(self.shapes)
        new_states = dict(state.client_states)
        new_states.update(acc.client_states)
        skipped = ""
        if aggregate:  # the federation's own server step (finite updates can still overflow it: then skipped)
            after, skipped = self.federation.step(state, aggregate, [], new_states, state.privacy_state)
        else:
            after = replace(state, round=r + 1, client_states=new_states)
        report = RoundReport(
            round=r,
            cohort=cohort,
            dropped=acc.dropped,
            bytes_down=int(acc.bytes[0]),
            bytes_up=int(acc.bytes[1]),
            train_loss=acc.train_loss(),
            seconds=time.perf_counter() - t0,
            skipped=skipped,
            updates=len(cohort) - len(acc.dropped),  # every other client of the cohort was reduced
        )
        return after, report

    def _stacked_path(self) -> bool:
        """Whether updates can be reduced straight from the engine's stacked parameters.

        Needs an engine with ``run_stacked`` (the vectorised one) and identity links both ways (then a
        client's start is the global model and the decoded update is exactly ``trained - global``), and
        an algorithm that uploads every held, non-local parameter.
        """
        if not hasattr(self.engine, "run_stacked"):
            return False
        for link in (self.up, self.down):
            codecs = getattr(link, "codecs", None)
            if link.stateful or not codecs or any(getattr(c, "name", None) != "identity" for c in codecs):
                return False
        for client in {c.tasks: c for c in self.data.clients}.values():
            layout = self.layouts.of(client)
            if layout.uploaded != tuple(n for n in layout.held if self.model.group_of(n) != LOCAL):
                return False
        return True

    def _payload_bytes(self, client: ClientData) -> int:
        """Uplink bytes of this client's update: identity payload sizes depend only on names and shapes,
        so they are encoded once per task set."""
        if client.tasks not in self._bytes_cache:
            names = self.layouts.of(client).uploaded
            payload, _ = self.up.encode({n: torch.zeros(self.shapes[n]) for n in names}, {}, None)
            self._bytes_cache[client.tasks] = len(payload)
        return self._bytes_cache[client.tasks]

    def _reduce_stacked(self, chunk, params, stacked, acc: RoundSums, r: int) -> None:  # type: ignore[no-untyped-def]
        """Add a stacked chunk's weighted deltas to the group sums: one matrix-vector product per group."""
        names_of = acc.names_of
        C = len(chunk)
        clients = [self.data.clients[cid] for cid in chunk]
        col = {t: i for i, t in enumerate(stacked.tasks)}
        groups = []
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
            partial = {}
            for gi, g, ns, wc in groups:
                wk = wc * ok
                parts = [
                    wk @ stacked.params[n].reshape(C, -1) - float(wk.sum()) * params[n].reshape(-1)
                    for n in ns
                ]
                partial[g] = (gi, torch.cat(parts), float(wk.sum()))
            if all(bool(torch.isfinite(v[1]).all()) for v in partial.values()):
                break
            # a non-finite update: find its client(s) exactly, drop them as the decoder would, and redo the sums
            for _gi, _g, ns, wc in groups:
                for n in ns:
                    bad = ~torch.isfinite(stacked.params[n].reshape(C, -1)).all(1) & (wc > 0)
                    ok[bad] = 0.0
        for g, (gi, total, wtot) in partial.items():
            acc.sums[g] += total.double()
            acc.weights[gi] += wtot
        for c, cid in enumerate(chunk):
            acc.client_states[cid] = stacked.state(self.model, c)
            acc.bytes[1] += self._payload_bytes(clients[c])
            if ok[c] == 0:
                acc.dropped[cid] = "payload carries NaN or Inf"
                log.warning("round %d: dropped client %d's update: payload carries NaN or Inf", r, cid)
        finite = ok > 0
        for ti, t in enumerate(acc.tasks):
            if t in col:
                m = (stacked.held[:, col[t]] > 0) & finite
                acc.loss_sum[ti] += float(stacked.loss_mean[m, col[t]].sum())
                acc.loss_count[ti] += float(m.sum())
