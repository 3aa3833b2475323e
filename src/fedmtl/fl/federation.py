"""One federated round, end to end: sample, broadcast, train, encode, decode, aggregate, step.

The round is split into the server's steps (:meth:`Federation.plan`, :meth:`Federation.collect`,
:meth:`Federation.apply`) and the client's (:class:`~fedmtl.fl.node.ClientNode`), so the same code
serves the in-process simulation (:meth:`Federation.round`) and a deployment where the bytes cross
a network (the Flower integration). It owns the order of the steps and the bookkeeping (bytes,
dropped clients), not their maths.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fedmtl.comm import PayloadError, build_links, ef21
from fedmtl.comm.delta import build_delta_link, encode_delta
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.data.dataset import ClientData, FederatedData
from fedmtl.fl.aggregation import aggregate_by_group, build_aggregator
from fedmtl.fl.algorithm import Algorithm, ServerContext, build_algorithm, with_server
from fedmtl.fl.algorithm_channel import decode_outbox, encode_tree, outbox_bound, state_view
from fedmtl.fl.byzantine import (
    OMNISCIENT,
    HonestView,
    attack,
    honest_view,
    malicious_clients,
    poison_client,
    tamper_reply,
)
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.node import ClientNode, ClientReply, downlink_copy, uplink_estimate
from fedmtl.fl.privacy_step import PrivacyStep, PrivateAggregate
from fedmtl.fl.sampling import cohort_size, sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.fl.server_opt import build_server_optimizer
from fedmtl.fl.transport import Delivery, Dispatching, InProcess, Reduced, Reducing, TooFewUpdates, Transport
from fedmtl.fl.update import ClientUpdate, bound_claims
from fedmtl.mtl import LOCAL, MultiTaskModel, build_model
from fedmtl.privacy.secagg.protocol import SecAggError
from fedmtl.tree import TensorTree, flatten

log = logging.getLogger("fedmtl")


@dataclass
class ServerState:
    """Everything a run needs to continue: the global model, optimiser state, each client's state."""

    round: int
    params: dict[str, Tensor]
    opt_state: TensorTree
    client_states: dict[int, ClientState] = field(default_factory=dict)
    #: the algorithm's server-side state (SCAFFOLD's control variate, IFCA's clusters, ...); {} for FedAvg
    algorithm_state: TensorTree = field(default_factory=dict)
    #: the privacy layer's state (adaptive clip norm, accountant history); {} without DP
    privacy_state: TensorTree = field(default_factory=dict)
    #: the simulated system's state (clock, clients in flight; fedmtl.fl.systems); {} without one
    systems_state: TensorTree = field(default_factory=dict)

    def client_state(self, cid: int) -> ClientState:
        """Client ``cid``'s state (empty before its first round)."""
        return self.client_states.get(cid) or ClientState()


@dataclass(frozen=True)
class RoundPlan:
    """The server's broadcast for one round: the cohort and the bytes each client receives.

    ``payloads`` carry the model; ``state_payloads`` the algorithm's server state (SCAFFOLD's ``c``,
    IFCA's clusters, ...), encoded by the same downlink chain, for the algorithms that have one.
    """

    round: int
    cohort: list[int]
    payloads: dict[int, bytes]
    state_payloads: dict[int, bytes] = field(default_factory=dict)
    #: the copy each client sent a model difference holds (the simulation hands it over; a deployed client has its own)
    copies: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def algorithm_bytes_down(self) -> int:
        return sum(len(p) for p in self.state_payloads.values())

    @property
    def bytes_down(self) -> int:
        return sum(len(p) for p in self.payloads.values()) + self.algorithm_bytes_down


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
    privacy: dict[str, object] = field(default_factory=dict)
    #: the part of ``bytes_down`` / ``bytes_up`` that carried the algorithm's state and outboxes
    algorithm_bytes_down: int = 0
    algorithm_bytes_up: int = 0
    #: why the round left the model unchanged although updates arrived ("" when it did not)
    skipped: str = ""
    #: what the simulated system did (``virtual_time``, staleness; fedmtl.fl.systems); {} without one
    systems: dict[str, object] = field(default_factory=dict)
    #: how many clients' updates were aggregated
    updates: int = 0


@dataclass(frozen=True)
class Applied:
    """What :meth:`Federation.apply` did besides the next state.

    Attributes:
        privacy: what the privacy layer reports about the round (epsilon, costs); ``{}`` without one.
        dropped: client id -> why its update was left out of the aggregate (it made it non-finite).
        skipped: why the round left the model unchanged ("" when it did not).
    """

    privacy: dict[str, object] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    skipped: str = ""


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating tensors that hold NaN or Inf."""
    return [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def largest_entry(update: ClientUpdate) -> float:
    """``max |delta|`` over an update's tensors (float64, so that a float32 overflow still ranks)."""
    return max((float(d.abs().max()) for d in update.delta.values() if d.numel()), default=0.0)


def initial_parameters(model: MultiTaskModel, seed: int) -> dict[str, Tensor]:
    """Re-initialise ``model`` under ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()  # type: ignore[operator]
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def max_client_epsilon(replies: Sequence[ClientReply]) -> dict[str, object]:
    """The largest per-client DP-SGD epsilon reported this round (sample-level DP), if any."""
    eps = [r.metrics["dp_sgd_epsilon"] for r in replies if "dp_sgd_epsilon" in r.metrics]
    return {"dp_sgd_max_client_epsilon": max(eps)} if eps else {}


def mean_train_loss(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Per-task training loss averaged over the accepted updates that reported it (a dropped client's
    loss, often the non-finite one that got it dropped, is not the federation's)."""
    loss: dict[str, list[float]] = {}
    for r in updates:
        for k, v in r.metrics.items():
            if k.startswith("loss/"):
                loss.setdefault(k[5:], []).append(v)
    return {t: sum(v) / len(v) for t, v in loss.items()}


class Federation:
    """The server's round logic over a fixed federation of clients."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: FederatedData,
        model: MultiTaskModel,
        engine: Engine | None = None,
        transport: Callable[[Federation], Transport] | None = None,
    ):
        """
        Args:
            engine: runs the cohort's local training in process (``None``: this federation only serves
                a deployment's rounds, whose clients train elsewhere).
            transport: builds the transport :meth:`round` uses when it is given none (default
                :class:`~fedmtl.fl.transport.InProcess`; ``fedmtl.engine.reducing.Streamed``: the streamed reduction).
        """
        self.cfg = cfg
        self.data = data
        self.model = model
        self.engine = engine
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm, functools.partial(build_model, cfg.model, data.input_shape))
        self.trainer = LocalTrainer(model, cfg.client, cfg.mtl, cfg.privacy.dp_sgd)
        self.up, self.down = build_links(cfg.comm)
        self.down_delta = build_delta_link(cfg.comm)
        self.node = ClientNode(
            model, self.trainer, self.algorithm, self.down, self.up, cfg.seed, self.down_delta, cfg.comm.uplink_ef21
        )
        #: each task set's held and uploaded names (the node's: computed once for both sides)
        self.layouts = self.node.layouts
        self.aggregator = build_aggregator(cfg.server.aggregator)
        self.server_opt = build_server_optimizer(cfg.server.optimizer)
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        #: what a received tensor must be (shape and dtype), checked before it is decoded
        self.specs = {n: torch.empty_like(p, device="meta") for n, p in model.named_parameters()}
        #: client id -> training rows a deployment learned of that client (its registration); the simulation
        #: knows each client's data and bounds claims by it
        self.known_samples: dict[int, int] = {}
        self._outbox_template: TensorTree | None = None
        #: what a client's outbox may hold: model parameters and the algorithm's own tensors (FedEM's gate)
        self.outbox_shapes = {**self.shapes, **self.algorithm.outbox_shapes()}
        self.population = self._population()
        # a group some of whose parameters no client uploads (FedBN's norm layers in the shared trunk) is
        # aggregated over the uploaded ones; groups nobody uploads at all stay whole (and are never aggregated)
        self.groups = {
            g: ([n for n in names if n in self.population] if any(n in self.population for n in names) else names)
            for g, names in model.param_groups().items()
            if g != LOCAL
        }
        self.cohort_size = cohort_size(data.num_clients, cfg.server.clients_per_round, cfg.server.fraction)
        self.byzantine = malicious_clients(range(data.num_clients), cfg.server.byzantine, cfg.seed)
        self.privacy: PrivacyStep | None = None
        if PrivacyStep.enabled(cfg.privacy):
            cap = max(c.num_train for c in data.clients)
            self.privacy = PrivacyStep(cfg.privacy, data.num_clients, self.cohort_size, cfg.server.rounds, cap)
        #: how :meth:`round`'s broadcast reaches the clients when it is given no transport
        self.transport: Transport = (transport or InProcess)(self)

    def _population(self) -> dict[str, int]:
        """Parameter name -> number of clients that upload it (clients with equal task sets upload the same)."""
        by_tasks: dict[tuple[str, ...], int] = {}
        for client in self.data.clients:
            by_tasks[client.tasks] = by_tasks.get(client.tasks, 0) + 1
        counts: dict[str, int] = {}
        for tasks, k in by_tasks.items():
            client = next(c for c in self.data.clients if c.tasks == tasks)
            for n in self.layouts.of(client).uploaded:
                counts[n] = counts.get(n, 0) + k
        return counts

    # -- server steps -------------------------------------------------------------------------
    def init_state(self) -> ServerState:
        params = initial_parameters(self.model, self.cfg.seed)
        algorithm_state = self.algorithm.server_init(params, self.data.num_clients, generator(self.cfg.seed, "init", 1))
        privacy_state = self.privacy.init() if self.privacy is not None else {}
        return ServerState(
            round=0,
            params=params,
            opt_state=self.server_opt.init(params),
            algorithm_state=algorithm_state,
            privacy_state=privacy_state,
        )

    def can_run_round(self, state: ServerState) -> bool:
        """False when the privacy budget (a target epsilon) forbids another round."""
        return self.privacy is None or self.privacy.can_run_round(state.privacy_state)

    def stop_reason(self, state: ServerState) -> str:
        """Why no further round may run ("" when one may): the simulation and the Flower server both stop on it."""
        if self.can_run_round(state):
            return ""
        return f"privacy budget: another round would exceed target epsilon {self.cfg.privacy.dp.target_epsilon}"  # type: ignore[union-attr]

    def cohort(self, round_index: int) -> list[int]:
        return sample_cohort(self.data.num_clients, self.cohort_size, generator(self.cfg.seed, "cohort", round_index))

    def plan(self, state: ServerState, cohort: Sequence[int] | None = None) -> RoundPlan:
        """Sample the cohort and encode what each client needs (shared + its heads, and its view of the
        algorithm's server state when there is one).

        Clients with the same task set receive identical bytes, so each distinct payload is encoded once;
        with ``comm.downlink_delta``, a client that kept its last copy receives the difference to it instead.
        """
        r = state.round
        chosen = list(cohort) if cohort is not None else self.cohort(r)
        cache: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
        payloads, state_payloads, copies = {}, {}, {}
        for cid in chosen:
            client = self.data.clients[cid]
            names = self.layouts.of(client).uploaded
            if client.tasks not in cache:
                model_bytes, _ = self.down.encode({n: state.params[n] for n in names}, {}, generator(self.cfg.seed, "down", r))
                cache[client.tasks] = (model_bytes, self._state_payload(state, client.tasks))
            payloads[cid], state_bytes = cache[client.tasks]
            if state_bytes:
                state_payloads[cid] = state_bytes
            copy = downlink_copy(state.client_state(cid)) if self.down_delta is not None else None
            if copy and set(copy) == set(names):
                copies[cid] = {n: copy[n] for n in names}  # the model's order (a checkpoint sorts keys)
                gen = generator(self.cfg.seed, "down", r, cid)
                payloads[cid] = encode_delta(self.down_delta, state.params, copies[cid], gen)  # type: ignore[arg-type]
        return RoundPlan(r, chosen, payloads, state_payloads, copies)

    def _state_payload(self, state: ServerState, tasks: tuple[str, ...]) -> bytes:
        """The algorithm's server state as a client with ``tasks`` receives it (``b""`` when there is none)."""
        if not state.algorithm_state:
            return b""
        view = state_view(state.algorithm_state, state.params, set(self.layouts.held(tasks)))
        payload, _ = encode_tree(self.down, view, {}, generator(self.cfg.seed, "down-state", state.round))
        return payload

    def server_views(self, state: ServerState, clients: Sequence[int]) -> dict[int, TensorTree]:
        """What each of ``clients`` decodes from its view of the algorithm's server state this round
        (after the downlink codecs), for evaluating personalised models between rounds; ``{}`` without one."""
        if not state.algorithm_state:
            return {}
        views: dict[tuple[str, ...], TensorTree] = {}
        out = {}
        for cid in clients:
            tasks = self.data.clients[cid].tasks
            if tasks not in views:
                views[tasks] = self.node.receive_state(self._state_payload(state, tasks))
            out[cid] = views[tasks]
        return out

    def claim_bounds(self, client: ClientData) -> tuple[int, dict[str, int]]:
        """The most training rows (in all, and per task) the server knows ``client`` to hold: its data in
        simulation, what its node reported at registration in a deployment (:attr:`known_samples`)."""
        if client.client_id in self.known_samples:
            n = self.known_samples[client.client_id]
            return n, {t: n for t in client.tasks}
        return client.num_train, {t: int(client.train.y[t].shape[0]) for t in client.tasks}

    def _outbox_limits(self, client: ClientData) -> tuple[dict[str, Tensor], int, int]:
        """What ``client``'s outbox may hold: its parameters and the algorithm's own tensors, in all no
        more than the algorithm's server state plus one copy of those."""
        if self._outbox_template is None:
            params = {n: p.detach() for n, p in self.model.named_parameters()}
            self._outbox_template = self.algorithm.server_init(params, self.data.num_clients, generator(self.cfg.seed, "init", 1))
        own = {n: torch.empty(s, device="meta") for n, s in self.algorithm.outbox_shapes().items()}
        specs = {**{n: self.specs[n] for n in self.layouts.of(client).held}, **own}
        return (specs, *outbox_bound(self._outbox_template, specs))

    def collect(
        self, replies: Sequence[ClientReply], state: ServerState | None = None
    ) -> tuple[list[ClientUpdate], dict[int, str]]:
        """Decode and validate each reply; a bad payload drops that client (with its reason), never the round.

        With ``comm.uplink_ef21`` a payload is the change of the client's EF21 estimate: its update is the
        server's mirror of that estimate in ``state`` (the round's state, before it) plus what it decodes to
        (:mod:`fedmtl.comm.ef21`).

        Payloads and outboxes are checked against what the client may send (names, shapes, dtypes, total
        size) before anything is allocated; claimed sample counts are clamped to what the server knows of
        the client (:meth:`claim_bounds`), each clamp logged.
        """
        updates, dropped = [], {}
        for reply in replies:
            client = self.data.clients[reply.client_id]
            names = self.layouts.of(client).uploaded
            try:
                received = self.up.decode(reply.payload, expected={n: self.specs[n] for n in names})
                if set(received) != set(names):
                    raise PayloadError(f"payload holds {len(received)} of the {len(names)} expected tensors")
                if self.node.uplink_ef21:
                    if state is None:
                        raise RuntimeError("comm.uplink_ef21: Federation.collect needs the round's state (the server's EF21 mirrors)")
                    received = ef21.advance(uplink_estimate(state.client_state(reply.client_id)), received)
                outbox = decode_outbox(self.up, reply.outbox, *self._outbox_limits(client)) if reply.outbox else {}
                num, tasks, notes = bound_claims(reply.num_samples, reply.task_samples, *self.claim_bounds(client))
            except ValueError as exc:  # PayloadError, or claims that are not sample counts
                dropped[reply.client_id] = str(exc)
                log.debug("dropped client %d's update: %s", reply.client_id, exc)
                continue
            for note in notes:
                log.warning("client %d's claim bounded: %s", reply.client_id, note)
            updates.append(ClientUpdate(reply.client_id, received, num, tasks, reply.metrics, outbox))
        if dropped:
            first = next(iter(dropped.items()))
            hint = " (local training diverged? lower client.optimizer.lr)" if "NaN" in first[1] else ""
            log.warning("dropped %d of %d updates, e.g. client %d: %s%s", len(dropped), len(replies), first[0], first[1], hint)
        return updates, dropped

    def _aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> PrivateAggregate:
        """The round's aggregate (privately when configured), the next privacy state, its log and who the
        privacy layer left out (secure aggregation's dropouts)."""
        if self.privacy is not None:
            gen = generator(self.cfg.seed, "privacy", state.round)
            return self.privacy.aggregate(updates, self.groups, state.privacy_state, gen)
        return PrivateAggregate(aggregate_by_group(updates, self.groups, self.aggregator), state.privacy_state, {})

    def apply(
        self,
        state: ServerState,
        updates: Sequence[ClientUpdate],
        client_states: Mapping[int, ClientState],
        aggregate: Callable[[ServerState, Sequence[ClientUpdate]], PrivateAggregate] | None = None,
    ) -> tuple[ServerState, Applied]:
        """Aggregate per parameter group (privately when configured), take the server optimiser's step, then the
        algorithm's server step (which sees the updates' outboxes).

        Nothing non-finite reaches the model: while the aggregate holds NaN or Inf (finite updates can overflow
        it), the update with the largest entry is dropped, with its reason; if the model or the algorithm's
        state after the step is still non-finite, the round is skipped (model and server state unchanged),
        with its reason. A secure aggregation that fails (fewer survivors than its threshold) reveals nothing:
        the round is skipped likewise and the run goes on with the next one; the protocol's dropouts are
        reported in ``dropped``.

        ``aggregate`` replaces the in-process aggregation (a deployment's secure aggregation over the network,
        :class:`~fedmtl.integrations.flower.secagg_server.SecureRound`).

        Returns the next state and what happened (:class:`Applied`).
        """
        kept = list(updates)
        dropped: dict[int, str] = {}

        def skip(reason: str) -> tuple[ServerState, Applied]:
            log.warning("round %d skipped: %s", state.round + 1, reason)
            return replace(state, round=state.round + 1, client_states=dict(client_states)), Applied({}, dropped, reason)

        while kept:
            try:
                agg = (aggregate or self._aggregate)(state, kept)
            except SecAggError as exc:
                dropped.update({c: exc.reasons.get(c, "dropped out of secure aggregation after sharing keys (simulated dropout_rate)") for c in exc.dropped})
                return skip(f"secure aggregation abandoned, nothing revealed: {exc}")
            bad = non_finite(agg.mean)
            if not bad:
                break
            worst = max(kept, key=largest_entry)
            dropped[worst.client_id] = f"its update (largest entry {largest_entry(worst):.3g}) makes the aggregate of {bad[:3]} non-finite"
            log.warning("round %d: dropped client %d: %s", state.round + 1, worst.client_id, dropped[worst.client_id])
            kept.remove(worst)
        if not kept:
            if dropped:
                return skip(f"every update makes the aggregate non-finite ({len(dropped)} dropped)")
            return replace(state, round=state.round + 1, client_states=dict(client_states)), Applied()
        dropped.update(agg.dropped)
        new_state, skipped = self.step(state, agg.mean, kept, client_states, agg.state)
        return new_state, Applied({} if skipped else agg.log, dropped, skipped)

    def step(
        self,
        state: ServerState,
        mean: Mapping[str, Tensor],
        kept: Sequence[ClientUpdate],
        client_states: Mapping[int, ClientState],
        privacy_state: TensorTree,
    ) -> tuple[ServerState, str]:
        """The server's step from the round's aggregate ``mean``: the server optimiser's, then the algorithm's
        (which sees the ``kept`` updates' outboxes). Shared by :meth:`apply` and the rounds a
        :class:`~fedmtl.fl.transport.Reducing` transport reduced (:meth:`conclude_reduced`: the mean without the updates).

        Returns the next state and why the round was skipped ("" when it was not): a model or algorithm state
        that the step left non-finite is never applied; the model and server state stay as they were.
        """
        params, opt_state = self.server_opt.step(state.params, mean, state.opt_state)
        outboxes = {u.client_id: u.outbox for u in kept if u.outbox}
        ctx = ServerContext(state.params, params, state.algorithm_state, kept, outboxes, self.groups, self.population)
        params, algorithm_state = self.algorithm.server_update(ctx)
        bad = non_finite(params) + non_finite(flatten(algorithm_state))
        if bad:
            reason = f"the model after the server step is non-finite in {bad[:3]} (the aggregate, the server optimiser or the algorithm's step overflowed)"
            log.warning("round %d skipped: %s", state.round + 1, reason)
            return replace(state, round=state.round + 1, client_states=dict(client_states)), reason
        return ServerState(state.round + 1, params, opt_state, dict(client_states), algorithm_state, privacy_state), ""

    @staticmethod
    def client_view(state: ServerState, cid: int, server: TensorTree | None = None) -> ClientState:
        """A client's state for this round: its own, plus its decoded view of the algorithm's server state."""
        return with_server(state.client_state(cid), server)

    def receive_all(self, plan: RoundPlan, cids: Sequence[int]) -> list[dict[str, Tensor]]:
        """Each client's decoded broadcast. Clients with the same task set receive the same bytes, so each
        distinct payload is decoded (and checked) once; clients share the decoded tensors, read-only."""
        decoded: dict[object, dict[str, Tensor]] = {}
        out = []
        for cid in cids:
            payload = plan.payloads[cid]
            key = (payload, cid) if cid in plan.copies else payload  # a difference is added to this client's copy
            if key not in decoded:
                decoded[key] = self.node.receive(payload, self.data.clients[cid], plan.copies.get(cid))
            out.append(decoded[key])
        return out

    def _honest_view(self, jobs: Sequence[CohortJob], starts: Sequence[Mapping[str, Tensor]], results: Sequence[LocalResult]) -> HonestView:
        """What an omniscient attacker sees of the round: the honest clients' true updates (its own when the
        whole cohort attacks)."""
        deltas = {
            job.client.client_id: {n: res.params[n] - start[n] for n in self.layouts.of(job.client).uploaded}
            for job, start, res in zip(jobs, starts, results)
        }
        honest = [d for c, d in deltas.items() if c not in self.byzantine] or list(deltas.values())
        return honest_view(honest, len(deltas), sum(c in self.byzantine for c in deltas))

    # -- the simulated round -------------------------------------------------------------------
    def jobs(
        self, state: ServerState, plan: RoundPlan, generators: Mapping[int, torch.Generator] | None = None
    ) -> tuple[list[CohortJob], list[dict[str, Tensor]]]:
        """The clients' side of ``plan`` up to training: each client decodes its broadcast (and its view of the
        algorithm's server state) into the job its engine runs.

        Args:
            generators: client id -> its training generator (default ``(seed, "client", round, client)``).

        Returns:
            The cohort's jobs (in the cohort's order) and each one's decoded broadcast (what its update is
            measured from).
        """
        r = state.round
        starts = self.receive_all(plan, plan.cohort)
        decoded: dict[bytes, TensorTree] = {}  # clients with equal task sets receive equal bytes: decode once
        for payload in plan.state_payloads.values():
            if payload not in decoded:
                decoded[payload] = self.node.receive_state(payload)
        byz = self.cfg.server.byzantine
        gens = generators or {}
        jobs = [
            CohortJob(
                start={**state.params, **start},
                client=poison_client(self.data.clients[cid], byz, self.data.tasks) if cid in self.byzantine else self.data.clients[cid],
                state=self.client_view(state, cid, decoded.get(plan.state_payloads.get(cid, b""))),
                generator=gens[cid] if cid in gens else generator(self.cfg.seed, "client", r, cid),
            )
            for cid, start in zip(plan.cohort, starts)
        ]
        return jobs, starts

    def uploads(
        self,
        state: ServerState,
        jobs: Sequence[CohortJob],
        starts: Sequence[Mapping[str, Tensor]],
        results: Sequence[LocalResult],
    ) -> tuple[list[ClientReply], dict[int, ClientState]]:
        """The clients' side after training: each encodes its update (a simulated attacker tampers with it).

        Returns:
            Each client's reply (in the jobs' order) and each one's next state.
        """
        r = state.round
        byz = self.cfg.server.byzantine
        honest = self._honest_view(jobs, starts, results) if byz is not None and byz.attack in OMNISCIENT else None
        client_states: dict[int, ClientState] = {}
        replies = []
        for job, start, res in zip(jobs, starts, results):
            cid = job.client.client_id
            tamper = None
            if cid in self.byzantine:
                gen = generator(self.cfg.seed, "byzantine", r, cid)
                tamper = lambda delta, g=gen: attack(delta, byz, g, honest=honest)  # noqa: E731
            reply, client_states[cid] = self.node.upload(start, res, job.client, r, tamper, prior=job.state)
            if cid in self.byzantine:
                reply = tamper_reply(reply, byz, self.up, self.layouts.of(job.client).uploaded)
            replies.append(reply)
        return replies, client_states

    def local_round(
        self,
        state: ServerState,
        plan: RoundPlan,
        generators: Mapping[int, torch.Generator] | None = None,
        engine: Engine | None = None,
    ) -> tuple[list[ClientReply], dict[int, ClientState]]:
        """The clients' side of ``plan`` in process: decode (:meth:`jobs`), train the cohort on the engine
        (one batch), upload (:meth:`uploads`).

        Args:
            generators: client id -> its training generator (default ``(seed, "client", round, client)``);
                the asynchronous driver keys them by model version and dispatch.
            engine: trains the cohort instead of :attr:`engine` (torch.distributed's, over the ranks).

        Returns:
            Each client's reply (in the cohort's order) and each one's next state.
        """
        engine = engine if engine is not None else self.engine
        if engine is None:
            raise RuntimeError("this Federation has no engine; pass one to simulate rounds")
        jobs, starts = self.jobs(state, plan, generators)
        results = engine.run_cohort(self.algorithm, self.trainer, jobs)
        return self.uploads(state, jobs, starts, results)

    def conclude(
        self,
        state: ServerState,
        replies: Sequence[ClientReply],
        client_states: Mapping[int, ClientState],
        *,
        cohort: Sequence[int],
        bytes_down: int,
        algorithm_bytes_down: int = 0,
        started: float | None = None,
        dropped: Mapping[int, str] | None = None,
        scale: Mapping[int, float] | None = None,
        collected: tuple[list[ClientUpdate], dict[int, str]] | None = None,
        aggregate: Callable[[ServerState, Sequence[ClientUpdate]], PrivateAggregate] | None = None,
    ) -> tuple[ServerState, RoundReport]:
        """The server's side of the replies that arrived: collect, apply, report.

        Args:
            client_states: every client's state after the round (those that did not take part: as they were).
            cohort, bytes_down, algorithm_bytes_down: what the round sent, for its report.
            started: ``time.perf_counter()`` when the round began (the report's ``seconds``).
            dropped: clients already left out before their reply was read (a simulated deadline), with why.
            scale: client id -> factor its decoded update is multiplied by before aggregation (FedBuff's
                staleness weight); 1 for a client not named.
            collected: what :meth:`collect` made of ``replies`` already (the round driver checks the count first).
            aggregate: replaces the in-process aggregation (:meth:`apply`'s ``aggregate``).
        """
        t0 = time.perf_counter() if started is None else started
        updates, bad = self.collect(replies, state) if collected is None else collected
        if scale:
            updates = [replace(u, delta={n: d * scale.get(u.client_id, 1.0) for n, d in u.delta.items()}) for u in updates]
        new_state, applied = self.apply(state, updates, client_states, aggregate)
        all_dropped = {**(dropped or {}), **bad, **applied.dropped}
        updates = [u for u in updates if u.client_id not in applied.dropped]
        report = RoundReport(
            round=state.round,
            cohort=list(cohort),
            dropped=all_dropped,
            bytes_down=bytes_down,
            bytes_up=sum(len(x.payload) + len(x.outbox) for x in replies),
            train_loss=mean_train_loss(updates),
            seconds=time.perf_counter() - t0,
            privacy={**applied.privacy, **max_client_epsilon(replies)},
            algorithm_bytes_down=algorithm_bytes_down,
            algorithm_bytes_up=sum(len(x.outbox) for x in replies),
            skipped=applied.skipped,
            updates=len(updates),
        )
        return new_state, report

    def conclude_reduced(
        self, state: ServerState, cohort: Sequence[int], reduced: Reduced, *, started: float, min_updates: int = 0
    ) -> tuple[ServerState, RoundReport]:
        """The server's side of a cohort a :class:`~fedmtl.fl.transport.Reducing` transport reduced: the same
        server step as :meth:`apply` (:meth:`step`), from the reduced mean; a round nobody's update reached
        leaves the model as it was.

        Raises:
            TooFewUpdates: fewer than ``min_updates`` of the cohort's updates were reduced (nothing applied).
        """
        updates = len(cohort) - len(reduced.dropped)  # every other client of the cohort was reduced
        if updates < min_updates:
            raise TooFewUpdates(updates, reduced.dropped)
        client_states = {**state.client_states, **reduced.client_states}
        skipped = ""
        if reduced.mean:  # finite updates can still overflow the step: then it is skipped
            after, skipped = self.step(state, reduced.mean, [], client_states, state.privacy_state)
        else:
            after = replace(state, round=state.round + 1, client_states=client_states)
        report = RoundReport(
            round=state.round,
            cohort=list(cohort),
            dropped=dict(reduced.dropped),
            bytes_down=reduced.bytes_down,
            bytes_up=reduced.bytes_up,
            train_loss=dict(reduced.train_loss),
            seconds=time.perf_counter() - started,
            skipped=skipped,
            updates=updates,
        )
        return after, report

    def round(
        self,
        state: ServerState,
        transport: Transport | Dispatching | None = None,
        *,
        cohort: Sequence[int] | None = None,
        min_updates: int = 0,
        started: float | None = None,
    ) -> tuple[ServerState, RoundReport]:
        """Run round ``state.round + 1`` and return the next state (inputs are not mutated): the one round driver.

        Plan (sample the cohort, encode the broadcast), deliver it over ``transport`` (default: :attr:`transport`,
        the clients training here on the engine), collect (decode and check every reply), apply (aggregate, step).
        A :class:`~fedmtl.fl.transport.Reducing` transport may instead run plan, deliver and collect chunk by
        chunk and hand back the reduced sums; the server step is the same (:meth:`conclude_reduced`). A
        :class:`~fedmtl.fl.transport.Dispatching` transport (FedBuff's buffer) chooses and plans its cohort itself.

        Args:
            transport: how the broadcast reaches the clients (:mod:`fedmtl.fl.transport`).
            cohort: the clients to ask (default: this round's sample, :meth:`cohort`; a dispatching transport's own).
            min_updates: raise :class:`~fedmtl.fl.transport.TooFewUpdates`, applying nothing, when fewer valid
                updates arrive (a deployment then retries the round).
            started: ``time.perf_counter()`` when the round began (default: now), for the report's ``seconds``.
        """
        t0 = time.perf_counter() if started is None else started
        transport = transport if transport is not None else self.transport
        if isinstance(transport, Dispatching):
            dispatched = transport.dispatch(state)
            chosen, down, algorithm_down, scale = list(dispatched.cohort), dispatched.bytes_down, dispatched.algorithm_bytes_down, dispatched.scale
            delivery: Delivery = dispatched
        else:
            chosen = list(cohort) if cohort is not None else self.cohort(state.round)
            if isinstance(transport, Reducing):
                reduced = transport.reduce(state, chosen)
                if reduced is not None:
                    return self.conclude_reduced(state, chosen, reduced, started=t0, min_updates=min_updates)
            plan = self.plan(state, chosen)
            delivery = transport.deliver(state, plan)
            down, algorithm_down, scale = plan.bytes_down, plan.algorithm_bytes_down, {}
        updates, bad = delivery.collect(delivery.replies) if delivery.collect else self.collect(delivery.replies, state)
        if len(updates) < min_updates:
            raise TooFewUpdates(len(updates), {**delivery.dropped, **bad})
        return self.conclude(
            state,
            delivery.replies,
            state.client_states if delivery.client_states is None else delivery.client_states,
            cohort=chosen,
            bytes_down=down,
            algorithm_bytes_down=algorithm_down,
            started=t0,
            dropped=delivery.dropped,
            scale=scale,
            collected=(updates, bad),
            aggregate=delivery.aggregate,
        )
