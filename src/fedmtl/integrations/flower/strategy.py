"""fedmtl's server loop on a Flower ``Grid``: registration, rounds that survive failing clients, checkpoints.

Flower's built-in strategies expect every reply to carry the same array keys; fedmtl's replies do
not (each client sends only its own task heads, encoded by its codec chain), so fedmtl brings its
own loop. The maths stays in :class:`~fedmtl.fl.federation.Federation` (plan, collect, apply);
this module owns only who is asked, how long the server waits and what happens when clients fail:

* a client whose ClientApp raises comes back as an error reply: it is dropped from the round;
* a client that does not answer within ``round-timeout`` (a SuperNode killed mid-round, a hung
  client) is dropped and left out of the next ``quarantine-rounds`` cohorts;
* a round that ends with fewer valid replies than required is re-run (fresh cohort among the
  nodes still answering) up to ``max-retries`` times; then the run stops with :class:`RoundFailed`.
  The server checkpoints after every round, so restarting the run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from flwr.app import Message, MessageType, RecordDict

from fedmtl.atomic import atomic_write_text
from fedmtl.config import ConfigError, dump_config
from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.fl.federation import Federation, ServerState, max_client_epsilon, mean_train_loss
from fedmtl.fl.node import ClientReply
from fedmtl.fl.sampling import sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower.downlink import bases, remember_copies
from fedmtl.integrations.flower.settings import FlowerSettings
from fedmtl.report import MetricsLog
from fedmtl.runloop.checkpoint import (
    check_algorithm_state,
    check_resumable,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)
from fedmtl.runloop.evaluation import evaluate_global, global_model_note, summarize_personalized

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

    Secure aggregation is simulated in process (the server would see plain updates); ``systems`` is the
    simulator's clock (a deployment has real clients' timing). Algorithms that keep
    server state for their clients (SCAFFOLD, IFCA, FedEM, MOCHA) are carried: the train message holds that
    state and the reply the client's extra uploads (see :func:`messages.train_content`).
    """
    if fed.cfg.privacy.secure_aggregation is not None:
        raise ValueError(
            "privacy.secure_aggregation is an in-process simulation of the protocol; on Flower the server would "
            "receive plain updates, so it is refused here. Use privacy.dp (server placement) or run it in simulation."
        )
    if getattr(fed.cfg, "systems", None) is not None:
        raise ValueError(
            "systems (simulated client speeds, availability, deadlines, FedBuff) drives the simulator's clock; on "
            "Flower the real clients' speed and availability decide, so it is refused here. Remove the systems "
            "section to deploy, or run it in simulation."
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

    def run_round(self, state: ServerState) -> tuple[ServerState, dict[str, Any]]:
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
            plan = self.fed.plan(state, cohort)
            base = bases(plan)
            contents = {
                online[c]: msgs.train_content(plan.payloads[c], r, c, plan.state_payloads.get(c, b""), base.get(c, ""))
                for c in cohort
            }
            ex = exchange(
                self.grid,
                contents,
                MessageType.TRAIN,
                str(r + 1),
                self.settings.round_timeout,
                self.settings.poll_interval,
                self.clock,
                self.sleep,
            )
            # the mirrors of the clients' copies (comm.downlink_delta): kept even when this attempt falls short
            answered = [self.registry.client_of[n] for n in ex.replies]
            lost = [self.registry.client_of[n] for n in [*ex.failed, *ex.timed_out]]
            mirrors = remember_copies(self.fed, plan, answered, lost, state.client_states, self.settings.downlink_mirrors)
            state = replace(state, client_states=mirrors)
            dropped: dict[int, str] = {self.registry.client_of[n]: why for n, why in ex.failed.items()}
            for n in ex.timed_out:
                dropped[self.registry.client_of[n]] = f"no reply within {self.settings.round_timeout:.0f} s"
                self.registry.quarantine[n] = r + 1 + self.settings.quarantine_rounds
            replies: list[ClientReply] = []
            for n, m in ex.replies.items():
                try:
                    reply = msgs.read_reply_content(m.content)
                except Exception as exc:  # whatever a node sends drops that node, never the run
                    dropped[self.registry.client_of[n]] = f"bad reply: {type(exc).__name__}: {str(exc)[:200]}"
                    continue
                if reply.client_id != self.registry.client_of[n]:
                    dropped[self.registry.client_of[n]] = f"reply claims client {reply.client_id}"
                    continue
                replies.append(reply)
            updates, bad = self.fed.collect(replies)
            dropped.update(bad)
            for c, why in sorted(dropped.items()):
                log.warning("round %d: client %d dropped: %s", r + 1, c, why)
            if len(updates) >= need:
                state_up = sum(len(x.outbox) for x in replies)
                new_state, applied = self.fed.apply(state, updates, state.client_states)  # logs what it drops
                dropped.update(applied.dropped)
                updates = [u for u in updates if u.client_id not in applied.dropped]
                record = {
                    "round": new_state.round,
                    "cohort_size": len(cohort),
                    "replies": len(updates),
                    "dropped": {str(k): v for k, v in dropped.items()},
                    "attempts": attempt + 1,
                    "failed_attempts": tried,
                    "bytes_down": plan.bytes_down,
                    "bytes_up": sum(len(x.payload) for x in replies) + state_up,
                    "wire_bytes_down": ex.wire_down,
                    "wire_bytes_up": ex.wire_up,
                    "train_loss": mean_train_loss(updates),
                    "round_seconds": time.perf_counter() - t0,
                    "engine": "flower",
                }
                if plan.state_payloads or state_up:
                    # included in bytes_down / bytes_up: the algorithm's server state and the clients' outboxes
                    record["algorithm_bytes_down"] = plan.algorithm_bytes_down
                    record["algorithm_bytes_up"] = state_up
                privacy = {**applied.privacy, **max_client_epsilon(replies)}
                if privacy:
                    record["privacy"] = privacy
                if applied.skipped:
                    record["skipped"] = applied.skipped
                return new_state, record
            tried.append(
                {
                    "attempt": attempt,
                    "cohort": cohort,
                    "replies": len(updates),
                    "dropped": {str(k): v for k, v in dropped.items()},
                }
            )
            log.warning(
                "round %d attempt %d: %d of %d valid replies, %d needed; retrying",
                r + 1,
                attempt + 1,
                len(updates),
                len(cohort),
                need,
            )
        raise RoundFailed(
            f"round {r + 1} failed: fewer than the required replies after {self.settings.max_retries + 1} attempt(s) "
            f"({tried}). The last checkpoint (round {r}) is in {self.run_dir / 'checkpoints'}; "
            f"fix the nodes and submit the run again to resume."
        )

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

    # -- the run ------------------------------------------------------------------------------
    def _start_state(self, metrics: MetricsLog) -> tuple[ServerState, float]:
        if self.settings.resume and list_checkpoints(self.run_dir):
            check_resumable(self.run_dir, self.cfg)
            state, meta = load_latest(self.run_dir)
            check_algorithm_state(state, self.fed.init_state().algorithm_state, self.cfg.algorithm.name)
            metrics.truncate_after(state.round)
            log.info("resuming %s from round %d", self.run_dir, state.round)
            return state, float(meta.get("elapsed", 0.0))
        if list_checkpoints(self.run_dir):
            raise ConfigError(
                f"{str(self.run_dir)!r} already holds a run and resume is off; choose another run-name"
            )
        metrics.truncate_after(0)
        return self.fed.init_state(), 0.0

    def run(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the summary written to ``summary.json``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        state, elapsed = self._start_state(metrics)
        self.run_key = run_key(self.run_dir, fresh=state.round == 0)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
        atomic_write_text(self.run_dir / "flower.yaml", yaml.safe_dump(self.settings.model_dump()))
        self.wait_for_nodes()
        rounds = self.cfg.server.rounds
        final_clients: list[dict[str, Any]] = []
        stopped = ""
        while state.round < rounds:
            stopped = self.fed.stop_reason(state)
            if stopped:
                log.warning("stopping after round %d: %s", state.round, stopped)
                break
            t0 = time.perf_counter()
            state, record = self.run_round(state)
            if state.round % self.cfg.evaluation.every == 0 or state.round == rounds:
                record["global"] = evaluate_global(
                    self.fed.model, state.params, self.fed.data, self.cfg.evaluation.batch_size, algorithm=self.fed.algorithm
                )
                if self.cfg.evaluation.personalized:
                    record["personalized"], rows, info = self.evaluate_personalized(state)
                    record["personalized_evaluation"] = info
                    if state.round == rounds:
                        final_clients = rows
            elapsed += time.perf_counter() - t0
            record["elapsed"] = elapsed
            metrics.append(record)
            if state.round % self.cfg.output.checkpoint_every == 0 or state.round == rounds or not self.fed.can_run_round(state):
                save_checkpoint(
                    self.run_dir, state, {"elapsed": elapsed}, keep=self.cfg.output.keep_checkpoints
                )
            log.info(
                "round %d/%d: %d replies, dropped %s, %s",
                state.round,
                rounds,
                record["replies"],
                record["dropped"],
                record.get("global", ""),
            )
        history = metrics.read()
        last_eval: dict[str, Any] = next((h for h in reversed(history) if h.get("global") is not None), {})
        summary = {
            "rounds_completed": state.round,
            "engine": "flower",
            "wall_seconds": elapsed,
            "bytes_down_total": sum(h.get("bytes_down", 0) for h in history),
            "bytes_up_total": sum(h.get("bytes_up", 0) for h in history),
            "wire_bytes_down_total": sum(h.get("wire_bytes_down", 0) for h in history),
            "wire_bytes_up_total": sum(h.get("wire_bytes_up", 0) for h in history),
            "final_global": last_eval.get("global", {}),
            "final_personalized": last_eval.get("personalized", {}),
            "clients": {str(c): list(t) for c, t in sorted(self.registry.tasks.items())},
            "seed": self.cfg.seed,
        }
        if global_model_note(self.fed.algorithm):
            summary["global_model"] = global_model_note(self.fed.algorithm)
        if stopped:
            summary["stopped_early"] = stopped
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if final_clients:  # as the simulation: the last round's per-client personalised scores
            atomic_write_text(self.run_dir / "clients.json", json.dumps(final_clients, indent=1))
        return summary


__all__ = ["Exchange", "FlowerServer", "GridLike", "Registry", "RoundFailed", "exchange", "run_key", "stub_client"]
