"""fedmtl's server loop on a Flower ``Grid``: registration, rounds that survive failing clients, checkpoints.

Flower's built-in strategies expect every reply to carry the same array keys; fedmtl's replies do
not (each client sends only its own task heads, encoded by its codec chain), so fedmtl brings its
own. The round is the simulation's (:meth:`Federation.round <fedmtl.fl.federation.Federation.round>`:
plan, collect, apply) with Flower's grid as its transport (:class:`GridTransport`), and the run is the
simulation's run loop (:func:`fedmtl.runloop.loop.run_rounds`: resume, evaluation, metrics, checkpoints,
summary) with :class:`FlowerServer` as its runner. This module owns only who is asked, how long the
server waits and what happens when clients fail:

* a client whose ClientApp raises comes back as an error reply: it is dropped from the round;
* a client that does not answer within ``round-timeout`` (a SuperNode killed mid-round, a hung
  client) is dropped and left out of the next ``quarantine-rounds`` cohorts;
* a round that ends with fewer valid replies than required is re-run (fresh cohort among the
  nodes still answering) up to ``max-retries`` times; then the run stops with :class:`RoundFailed`.
  The server checkpoints every ``output.checkpoint_every`` rounds, so restarting the run resumes there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from flwr.app import Message, MessageType, RecordDict

from fedmtl.atomic import atomic_write_text
from fedmtl.config import ConfigError
from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.federation import Federation, RoundPlan, ServerState
from fedmtl.fl.node import ClientReply
from fedmtl.fl.sampling import sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.fl.transport import Delivery, TooFewUpdates
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower.downlink import bases, remember_copies
from fedmtl.integrations.flower.secagg_server import SecureRound, refusal
from fedmtl.integrations.flower.settings import FlowerSettings
from fedmtl.runloop.checkpoint import list_checkpoints
from fedmtl.runloop.evaluation import evaluate_global, summarize_personalized
from fedmtl.runloop.loop import Evaluation, RoundResult, run_rounds
from fedmtl.runloop.progress import LogLines
from fedmtl.runloop.records import round_record

log = logging.getLogger("fedmtl")
REGISTER_BACKOFF = 10.0


class RoundFailed(RuntimeError):
    """A round stayed below its minimum number of replies after every retry."""


class GridLike(Protocol):
    """The part of Flower's ``Grid`` the loop uses (a fake implements it in unit tests)."""

    def get_node_ids(self) -> Iterable[int]: ...

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...


@dataclass(frozen=True)
class Exchange:
    """The outcome of sending one message to each of several nodes and waiting for the answers."""

    replies: dict[int, Message]
    failed: dict[int, str]
    timed_out: list[int]
    wire_down: int
    wire_up: int


@dataclass
class Registry:
    """Which Flower node is which fedmtl client (learned by a registration query)."""

    client_of: dict[int, int] = field(default_factory=dict)  # node id -> client id
    tasks: dict[int, tuple[str, ...]] = field(default_factory=dict)  # client id -> tasks
    quarantine: dict[int, int] = field(default_factory=dict)  # node id -> first round it may rejoin


def exchange(
    grid: GridLike,
    contents: Mapping[int, RecordDict],
    message_type: str,
    group: str,
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Exchange:
    """Send ``contents[node]`` to each node, pull replies until all answered, a node left, or ``timeout``."""
    messages = {
        n: Message(c, dst_node_id=n, message_type=message_type, ttl=timeout + 60.0, group_id=group)
        for n, c in contents.items()
    }
    wire_down = sum(msgs.wire_bytes(m) for m in messages.values())
    ids: list[str | None] = list(grid.push_messages(list(messages.values())))
    ids += [None] * (
        len(messages) - len(ids)
    )  # Flower returns [] (or None entries) for what it could not push
    node_of = {mid: n for mid, n in zip(ids, messages, strict=True) if mid}
    failed = {
        n: "message could not be pushed to the SuperLink"
        for mid, n in zip(ids, messages, strict=True)
        if not mid
    }
    replies: dict[int, Message] = {}
    wire_up = 0
    deadline = clock() + timeout
    last_check = clock()
    while node_of:
        for reply in grid.pull_messages(list(node_of)):
            node = node_of.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if reply.has_error():
                failed[node] = f"error {reply.error.code}: {reply.error.reason}"
            else:
                wire_up += msgs.wire_bytes(reply)
                replies[node] = reply
        if not node_of or clock() >= deadline:
            break
        if clock() - last_check > 2.0:  # a node the SuperLink declared offline will never answer
            last_check = clock()
            online = set(grid.get_node_ids())
            for mid, n in list(node_of.items()):
                if n not in online:
                    failed[n] = "node went offline"
                    del node_of[mid]
        sleep(poll)
    return Exchange(replies, failed, sorted(node_of.values()), wire_down, wire_up)


def stub_client(cid: int, tasks: tuple[str, ...], data: FederatedData) -> ClientData:
    """What the server knows of a client: its id and task set (no rows)."""
    empty = Split(torch.empty((0, *data.input_shape)), {t: torch.empty(0) for t in tasks})
    return ClientData(cid, tasks, empty, empty)


def check_deployable(fed: Federation) -> None:
    """Refuse, with the reason, what the deployment does not carry instead of running it wrongly.

    Secure aggregation runs as message exchanges between the server and the nodes
    (:mod:`~fedmtl.integrations.flower.secagg_server`), for algorithms whose server step needs only the
    aggregate; ``systems`` is the simulator's clock (a deployment has real clients' timing). Algorithms that keep
    server state for their clients (SCAFFOLD, IFCA, FedEM, MOCHA) are carried: the train message holds that
    state and the reply the client's extra uploads (see :func:`messages.train_content`).
    """
    if fed.cfg.privacy.secure_aggregation is not None and refusal(fed):
        raise ValueError(f"privacy.secure_aggregation on Flower: {refusal(fed)}")
    if getattr(fed.cfg, "systems", None) is not None:
        raise ValueError(
            "systems (simulated client speeds, availability, deadlines, FedBuff) drives the simulator's clock; on "
            "Flower the real clients' speed and availability decide, so it is refused here. Remove the systems "
            "section to deploy, or run it in simulation."
        )
    if fed.cfg.comm.uplink_ef21:
        raise ValueError(
            "comm.uplink_ef21 needs the server's mirror of each client's EF21 estimate, which the simulation reads "
            "from the client's state; the Flower server does not keep those mirrors yet, so it is refused here. "
            "Set comm.uplink_ef21: false (error feedback on the uplink codecs) to deploy, or run it in simulation."
        )


def run_key(run_dir: Path, fresh: bool) -> str:
    """The run's key (``run_dir/run-key``): new for a fresh run, the saved one when it resumes.

    Clients keep their state under it (:mod:`~fedmtl.integrations.flower.node_state`): a resumed run finds
    its clients' state, a fresh one in the same place starts its clients afresh.
    """
    path = Path(run_dir) / "run-key"
    if not fresh and path.exists():
        key = path.read_text().strip()
        if key:
            return key
        log.warning("%s is empty: the clients start with fresh state", path)
    elif not fresh:
        log.warning("%s has no run-key (written by an older fedmtl): the clients start with fresh state", run_dir)
    key = uuid.uuid4().hex
    atomic_write_text(path, key + "\n")
    return key


class GridTransport:
    """The transport of a round on Flower's grid (:mod:`fedmtl.fl.transport`): one train message per cohort client
    to its node, the replies that arrive within ``round-timeout`` read back.

    A node that fails or stays silent drops its client (a silent one is also quarantined); a reply that cannot be
    read, or that claims another client, drops that client. The clients keep their own state (node-local).

    Attributes:
        wire_down, wire_up: the bytes of Flower's messages, both ways (set by :meth:`deliver`).
    """

    def __init__(self, server: FlowerServer, online: Mapping[int, int]):
        self.server = server
        self.online = online  # client id -> node id
        self.train_wire = (0, 0)
        self.secure: SecureRound | None = None
        #: the clients' states with the server's mirrors of their downlink copies after this delivery
        #: (``comm.downlink_delta``): kept even when the attempt falls short of its quorum
        self.client_states: dict[int, ClientState] | None = None

    @property
    def wire_down(self) -> int:
        """Bytes of Flower's messages to the nodes: the train messages and secure aggregation's stages."""
        return self.train_wire[0] + (self.secure.wire_down if self.secure is not None else 0)

    @property
    def wire_up(self) -> int:
        """Bytes of Flower's messages from the nodes: the train replies and secure aggregation's stages."""
        return self.train_wire[1] + (self.secure.wire_up if self.secure is not None else 0)

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery:
        server, r = self.server, state.round
        base = bases(plan)
        contents = {
            self.online[c]: msgs.train_content(plan.payloads[c], r, c, plan.state_payloads.get(c, b""), base.get(c, ""))
            for c in plan.cohort
        }
        self.secure = server._secure_round(r, {c: self.online[c] for c in plan.cohort})
        if self.secure is not None:  # the nodes keep their updates: the train replies carry public keys
            self.secure.offer(contents)
        ex = exchange(
            server.grid,
            contents,
            MessageType.TRAIN,
            str(r + 1),
            server.settings.round_timeout,
            server.settings.poll_interval,
            server.clock,
            server.sleep,
        )
        self.train_wire = (ex.wire_down, ex.wire_up)
        client_of = server.registry.client_of
        answered = [client_of[n] for n in ex.replies]
        lost = [client_of[n] for n in [*ex.failed, *ex.timed_out]]
        states = remember_copies(server.fed, plan, answered, lost, state.client_states, server.settings.downlink_mirrors)
        self.client_states = states
        dropped: dict[int, str] = {client_of[n]: why for n, why in ex.failed.items()}
        for n in ex.timed_out:
            dropped[client_of[n]] = f"no reply within {server.settings.round_timeout:.0f} s"
            server.registry.quarantine[n] = r + 1 + server.settings.quarantine_rounds
        replies: list[ClientReply] = []
        for n, m in ex.replies.items():
            try:
                reply = msgs.read_reply_content(m.content)
            except Exception as exc:  # whatever a node sends drops that node, never the run
                dropped[client_of[n]] = f"bad reply: {type(exc).__name__}: {str(exc)[:200]}"
                continue
            if reply.client_id != client_of[n]:
                dropped[client_of[n]] = f"reply claims client {reply.client_id}"
                continue
            replies.append(reply)
        secure = self.secure
        if secure is None:
            return Delivery(replies, states, dropped)
        by_client = {client_of[n]: m.content for n, m in ex.replies.items()}
        # secure aggregation's remaining stages run as the round's aggregate: the server sees only masked vectors
        return Delivery(replies, states, dropped, collect=lambda rs: secure.collect(rs, by_client), aggregate=secure.aggregate)


class FlowerServer:
    """Runs a fedmtl experiment's rounds over a Flower grid.

    Args:
        fed: the server's :class:`Federation`; its ``data`` needs only tasks, input shape and holdout:
            the clients' task sets are learned from the nodes at registration.
        settings: deployment settings.
        grid: Flower's grid (or anything with its three methods).
        run_dir: the run folder (config.yaml, metrics.jsonl, checkpoints/, summary.json).
    """

    def __init__(
        self,
        fed: Federation,
        settings: FlowerSettings,
        grid: GridLike,
        run_dir: Path,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        check_deployable(fed)
        self.template = fed  # never changed: what the server knew before any node registered
        #: the federation of the task sets the nodes reported (rebuilt from the template when they change)
        self.fed = fed
        self.cfg = fed.cfg
        self.settings = settings
        self.grid = grid
        self.run_dir = Path(run_dir)
        self.registry = Registry()
        self.clock = clock
        self.sleep = sleep
        self._num_clients = fed.data.num_clients
        self._template = fed.data
        self._retry_after: dict[int, float] = {}  # node id -> when a failed registration may be retried
        self._samples: dict[int, int] = {}  # client id -> training rows its node reported: bounds its claims
        self.run_key = ""  # set by run(): the clients keep their saved state under it (see run_key())

    # -- registration -------------------------------------------------------------------------
    def register(self) -> None:
        """Ask every node not yet known which client it is; refuse duplicates and unknown ids."""
        known = set(self.registry.client_of)
        now = self.clock()
        new = [n for n in self.grid.get_node_ids() if n not in known and self._retry_after.get(n, now) <= now]
        if not new:
            return
        content = msgs.register_content(self.cfg.model_dump_json(), self.run_key)
        timeout = min(self.settings.wait_for_nodes, self.settings.round_timeout)
        ex = exchange(
            self.grid,
            {n: content for n in new},
            MessageType.QUERY,
            "register",
            timeout,
            self.settings.poll_interval,
            self.clock,
            self.sleep,
        )
        for node, reason in [*ex.failed.items(), *((n, "no answer") for n in ex.timed_out)]:
            log.warning(
                "node %d failed to register (asking again in %.0f s): %s", node, REGISTER_BACKOFF, reason
            )
            self._retry_after[node] = self.clock() + REGISTER_BACKOFF
        changed = False
        for node, reply in ex.replies.items():
            try:
                cid, tasks, samples = msgs.read_registration(reply.content)
            except Exception as exc:  # a hostile node's registration fails that node, never the run
                log.warning("node %d sent a bad registration: %s", node, exc)
                continue
            self._retry_after[node] = (
                self.clock() + REGISTER_BACKOFF
            )  # refused below: not asked again at once
            if not 0 <= cid < self._num_clients:
                log.warning(
                    "node %d claims client %d; the federation has clients 0..%d",
                    node,
                    cid,
                    self._num_clients - 1,
                )
                continue
            unknown = set(tasks) - set(self._template.task_names)
            if unknown or not tasks:
                log.warning(
                    "node %d (client %d) reports tasks %s; known tasks are %s",
                    node,
                    cid,
                    list(tasks),
                    self._template.task_names,
                )
                continue
            for old, c in list(self.registry.client_of.items()):
                if c == cid:  # a restarted SuperNode comes back with a new node id
                    del self.registry.client_of[old]
            self.registry.client_of[node] = cid
            self._retry_after.pop(node, None)
            changed = changed or self.registry.tasks.get(cid) != tasks or self._samples.get(cid) != samples
            self.registry.tasks[cid] = tasks
            self._samples[cid] = samples
            log.info("node %d is client %d with tasks %s", node, cid, list(tasks))
        if changed:
            self.fed = self._federation()

    def _federation(self) -> Federation:
        """A Federation over the task sets the nodes reported: how many clients upload each parameter (SCAFFOLD's
        control-variate step divides by it) and the aggregation groups follow them; claims are bounded by the
        sample counts the nodes reported. Built anew (the template is never changed): it holds no round state."""
        clients = tuple(
            stub_client(c, self.registry.tasks.get(c, tuple(self._template.task_names)), self._template)
            for c in range(self._num_clients)
        )
        t = self.template
        fed = Federation(t.cfg, replace(self._template, clients=clients), t.model, t.engine)
        fed.known_samples.update(self._samples)
        return fed

    def wait_for_nodes(self) -> None:
        deadline = self.clock() + self.settings.wait_for_nodes
        while True:
            self.register()
            online = self._online()
            if len(online) >= self.settings.min_nodes:
                return
            if self.clock() >= deadline:
                raise RoundFailed(
                    f"only {len(online)} registered SuperNode(s) after {self.settings.wait_for_nodes:.0f} s; "
                    f"min-nodes is {self.settings.min_nodes}. Start more SuperNodes or lower min-nodes."
                )
            self.sleep(max(self.settings.poll_interval, 0.5))

    def _online(self) -> dict[int, int]:
        """Registered clients whose node is online: client id -> node id."""
        online = set(self.grid.get_node_ids())
        return {c: n for n, c in self.registry.client_of.items() if n in online}

    # -- one round ----------------------------------------------------------------------------
    def choose_cohort(self, round_index: int, attempt: int, online: Mapping[int, int]) -> list[int]:
        """The simulation's cohort when every client is there; otherwise a sample of those available.

        Args:
            online: client id -> node id of the clients online now (:meth:`_online`); the round sends to
                these nodes, so the cohort is drawn from the same snapshot.

        Nodes in quarantine (they timed out recently) are left out unless that leaves too few clients.
        """
        healthy = sorted(c for c, n in online.items() if self.registry.quarantine.get(n, 0) <= round_index)
        if attempt == 0 and len(healthy) == self._num_clients:
            return self.fed.cohort(round_index)
        size = min(self.fed.cohort_size, len(healthy))
        if size < self.settings.required_replies(size) or not healthy:
            healthy, size = sorted(online), min(self.fed.cohort_size, len(online))  # everyone still online
        picks = sample_cohort(
            len(healthy), size, generator(self.cfg.seed, "cohort", round_index, attempt + 1)
        )
        return [healthy[i] for i in picks]

    def run_round(self, state: ServerState) -> RoundResult:
        """Round ``state.round + 1``: the federation's round with the grid as its transport (:class:`GridTransport`),
        re-run with a fresh cohort while fewer valid replies than required arrive (:class:`RoundFailed` after
        ``max-retries``)."""
        r = state.round
        t0 = time.perf_counter()
        tried: list[dict[str, Any]] = []
        for attempt in range(self.settings.max_retries + 1):
            self.register()  # pick up nodes that (re)connected
            online = self._online()
            cohort = self.choose_cohort(r, attempt, online)
            need = self.settings.required_replies(len(cohort))
            if len(cohort) < need or not cohort:
                tried.append(
                    {"attempt": attempt, "cohort": cohort, "reason": f"only {len(cohort)} clients available"}
                )
                log.warning(
                    "round %d attempt %d: %d clients available, %d replies needed",
                    r + 1,
                    attempt + 1,
                    len(cohort),
                    need,
                )
                self.sleep(min(self.settings.round_timeout, 5.0))
                continue
            grid = GridTransport(self, online)
            try:
                new_state, report = self.fed.round(state, grid, cohort=cohort, min_updates=need, started=t0)
            except TooFewUpdates as few:
                if grid.client_states is not None:  # the mirrors of what the nodes received stay true
                    state = replace(state, client_states=grid.client_states)
                self._log_dropped(r, few.dropped)
                tried.append(
                    {
                        "attempt": attempt,
                        "cohort": cohort,
                        "replies": few.updates,
                        "dropped": {str(k): v for k, v in few.dropped.items()},
                    }
                )
                log.warning(
                    "round %d attempt %d: %d of %d valid replies, %d needed; retrying",
                    r + 1,
                    attempt + 1,
                    few.updates,
                    len(cohort),
                    need,
                )
                continue
            self._log_dropped(r, report.dropped)
            record = round_record(new_state, report, self.engine)
            record["dropped"] = {str(k): v for k, v in report.dropped.items()}
            record.update(
                replies=report.updates,
                attempts=attempt + 1,
                failed_attempts=tried,
                wire_bytes_down=grid.wire_down,
                wire_bytes_up=grid.wire_up,
            )
            return RoundResult(new_state, record)
        raise RoundFailed(
            f"round {r + 1} failed: fewer than the required replies after {self.settings.max_retries + 1} attempt(s) "
            f"({tried}). The last checkpoint (round {r}) is in {self.run_dir / 'checkpoints'}; "
            f"fix the nodes and submit the run again to resume."
        )

    def _secure_round(self, round_index: int, nodes: Mapping[int, int]) -> SecureRound | None:
        """The round's secure aggregation over this grid (None without ``privacy.secure_aggregation``)."""
        if self.cfg.privacy.secure_aggregation is None:
            return None

        def send(contents: dict[int, RecordDict], kind: str, group: str) -> Exchange:
            s = self.settings
            return exchange(self.grid, contents, kind, group, s.round_timeout, s.poll_interval, self.clock, self.sleep)

        return SecureRound(self.fed, round_index, nodes, send)

    @staticmethod
    def _log_dropped(r: int, dropped: Mapping[int, str]) -> None:
        for c, why in sorted(dropped.items()):
            log.warning("round %d: client %d dropped: %s", r + 1, c, why)

    # -- personalised evaluation --------------------------------------------------------------
    def evaluate_personalized(
        self, state: ServerState
    ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        """Ask every online client to evaluate its personalised model on its test split; aggregate their sums.

        Returns the ``personalized`` block (as the simulation's), the per-client rows and what happened
        (clients that did not answer, wire bytes). A client that fails is left out of the block, not fatal.
        """
        online = self._online()
        clients = sorted(online)
        plan = self.fed.plan(state, clients)
        base = bases(plan)
        contents = {
            online[c]: msgs.evaluate_content(plan.payloads[c], state.round, c, plan.state_payloads.get(c, b""), base.get(c, ""))
            for c in clients
        }
        ex = exchange(
            self.grid,
            contents,
            MessageType.EVALUATE,
            f"evaluate-{state.round}",
            self.settings.round_timeout,
            self.settings.poll_interval,
            self.clock,
            self.sleep,
        )
        missing: dict[int, str] = {self.registry.client_of[n]: why for n, why in ex.failed.items()}
        missing.update({self.registry.client_of[n]: "no answer" for n in ex.timed_out})
        missing.update({c: "node offline" for c in range(self._num_clients) if c not in online})
        sums: dict[int, dict[str, dict[str, float]]] = {}
        for n, m in ex.replies.items():
            cid = self.registry.client_of[n]
            try:
                got, client_sums = msgs.read_evaluate_reply(m.content)
            except Exception as exc:  # a malformed answer leaves that client out, never the run
                missing[cid] = f"bad reply: {type(exc).__name__}: {str(exc)[:200]}"
                continue
            if got != cid or set(client_sums) - set(self.registry.tasks.get(cid, ())):
                missing[cid] = f"reply for client {got} with tasks {sorted(client_sums)}"
                continue
            sums[cid] = client_sums
        for c, why in sorted(missing.items()):
            log.warning("personalised evaluation after round %d: client %d left out: %s", state.round, c, why)
        summary, rows = summarize_personalized(self.fed.model, sums)
        info = {
            "missing": {str(c): why for c, why in sorted(missing.items())},
            "wire_bytes_down": ex.wire_down,
            "wire_bytes_up": ex.wire_up,
        }
        return summary, rows, info

    # -- what the run loop asks of a transport (fedmtl.runloop.loop.RoundRunner) ------------------
    engine = "flower"

    @property
    def algorithm(self) -> Algorithm:
        return self.fed.algorithm

    def init_state(self) -> ServerState:
        return self.fed.init_state()

    def start(self, state: ServerState) -> None:
        """The run key the clients keep their state under (new for a fresh run), the deployment settings, then
        wait for ``min-nodes`` registered SuperNodes."""
        self.run_key = run_key(self.run_dir, fresh=state.round == 0)
        atomic_write_text(self.run_dir / "flower.yaml", yaml.safe_dump(self.settings.model_dump()))
        self.wait_for_nodes()

    def stop_reason(self, state: ServerState) -> str:
        return self.fed.stop_reason(state)

    def can_run_round(self, state: ServerState) -> bool:
        return self.fed.can_run_round(state)

    def evaluate(self, state: ServerState) -> Evaluation:
        """The global model on the server's hold-out; the personalised models on the nodes (when configured)."""
        record: dict[str, Any] = {
            "global": evaluate_global(
                self.fed.model, state.params, self.fed.data, self.cfg.evaluation.batch_size, algorithm=self.fed.algorithm
            )
        }
        if not self.cfg.evaluation.personalized:
            return Evaluation(record)
        record["personalized"], rows, record["personalized_evaluation"] = self.evaluate_personalized(state)
        return Evaluation(record, rows)

    def summary(self, state: ServerState, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The bytes on the wire (Flower's messages) and each registered client's tasks."""
        return {
            "wire_bytes_down_total": sum(h.get("wire_bytes_down", 0) for h in history),
            "wire_bytes_up_total": sum(h.get("wire_bytes_up", 0) for h in history),
            "clients": {str(c): list(t) for c, t in sorted(self.registry.tasks.items())},
        }

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) every round under fedmtl's run loop; returns the summary written to ``summary.json``."""
        saved = bool(list_checkpoints(self.run_dir))
        if saved and not self.settings.resume:
            raise ConfigError(
                f"{str(self.run_dir)!r} already holds a run and resume is off; choose another run-name"
            )
        outcome = run_rounds(
            self,
            self.cfg,
            self.run_dir,
            resume=saved,
            progress=LogLines(),
            resume_hint=f"submit the run again with resume on (run folder {self.run_dir})",
        )
        return outcome.summary


__all__ = ["Exchange", "FlowerServer", "GridLike", "Registry", "RoundFailed", "exchange", "run_key", "stub_client"]
