"""FedBuff: asynchronous buffered aggregation on the simulated clock (Nguyen et al. 2022, Algorithm 1).

``concurrency`` clients train at once, each on the model version it received. Whenever one's update
arrives (or it goes offline and drops out), its slot goes to a client sampled from the online, idle
ones. The server takes a step whenever ``buffer_size`` (K) updates have arrived: each update's delta
is multiplied by the staleness weight of its age ``s`` (server steps since its version), then the
round's own machinery aggregates them (per parameter group, robustly or privately as configured) and
steps the server optimiser: the one round driver, :meth:`Federation.round`, over the :class:`Buffered`
transport. With ``max_staleness``, older updates are dropped.

Clients dispatched together start from the same model version, so the driver trains each such batch
as one cohort on the engine (the vectorised engine batches it); their updates are held, encoded, until
their simulated arrival. Everything between two server steps (the clock, the clients in flight and
their replies, the buffer) is a tensor tree in ``ServerState.systems_state``: a checkpoint holds it
and a resumed run continues exactly.

One call of :meth:`FedBuff.round` runs the events up to and including the next server step, so
``server.rounds`` counts server steps and metrics.jsonl has one line per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from fedmtl.config.systems import FedBuffMode, SystemsConfig
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.federation import Federation, RoundReport, ServerState
from fedmtl.fl.privacy_step import PrivacyStep
from fedmtl.fl.sampling import sample_among
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems.driver import Driver
from fedmtl.fl.systems.queue import InFlight, entries_from_tree, entries_to_tree
from fedmtl.fl.systems.staleness import build_staleness
from fedmtl.fl.transport import Dispatched
from fedmtl.tree import TensorTree

#: dispatches in a row whose clients all drop out before the driver gives up on this server step
STALL_FACTOR = 10


@dataclass
class AsyncState:
    """The driver's state between two server steps (``systems_state`` decoded)."""

    clock: float
    in_flight: list[InFlight]
    buffer: list[InFlight]
    #: dispatch batches sent at the current model version (keys the cohort generator)
    batch: int
    #: per client: the version it was last dispatched at, and how often at that version before (keys its training generator)
    last_version: torch.Tensor
    repeats: torch.Tensor
    #: totals over the run: dispatches, dropouts, stale updates dropped
    totals: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.int64))

    @classmethod
    def fresh(cls, num_clients: int) -> AsyncState:
        return cls(0.0, [], [], 0, torch.full((num_clients,), -1, dtype=torch.int64), torch.zeros(num_clients, dtype=torch.int64))

    @classmethod
    def from_tree(cls, tree: TensorTree, num_clients: int) -> AsyncState:
        if "last_version" not in tree:  # a new run (or one checkpointed before its first step)
            return replace(cls.fresh(num_clients), clock=float(tree.get("clock", 0.0)))
        return cls(
            float(tree["clock"]),
            entries_from_tree(tree.get("in_flight", {})),
            entries_from_tree(tree.get("buffer", {})),
            int(tree["batch"]),
            tree["last_version"].clone(),
            tree["repeats"].clone(),
            tree["totals"].clone(),
        )

    def to_tree(self) -> TensorTree:
        return {
            "clock": torch.tensor(self.clock, dtype=torch.float64),
            "in_flight": entries_to_tree(self.in_flight),
            "buffer": entries_to_tree(self.buffer),
            "batch": torch.tensor(self.batch),
            "last_version": self.last_version,
            "repeats": self.repeats,
            "totals": self.totals,
        }


@dataclass(frozen=True)
class Events:
    """What the simulated events before one server step did: the driver's next state, counts, the buffered
    updates' ages, and why no step could be taken ("" when one was)."""

    sim: AsyncState
    counts: dict[str, int]
    ages: list[int]
    stuck: str


class Buffered:
    """The transport of a FedBuff server step (:class:`~fedmtl.fl.transport.Dispatching`): it dispatches
    clients as slots free up and hands the round driver whoever's updates the buffer holds, with their
    staleness weights; the driver collects, aggregates and steps as in any round."""

    def __init__(self, driver: FedBuff):
        self.driver = driver
        #: what the events did (set by :meth:`dispatch`)
        self.events: Events | None = None

    def dispatch(self, state: ServerState) -> Dispatched:
        out, self.events = self.driver.events(state)
        return out


class FedBuff(Driver):
    """Asynchronous buffered aggregation over a :class:`Federation`'s steps."""

    def __init__(self, cfg: SystemsConfig, fed: Federation):
        super().__init__(cfg, fed)
        assert isinstance(cfg.mode, FedBuffMode)
        self.mode: FedBuffMode = cfg.mode
        n = fed.data.num_clients
        if self.mode.concurrency > n:
            raise ValueError(f"systems.mode.concurrency={self.mode.concurrency} exceeds the {n} clients; allowed: 1..{n}")
        self.weight = build_staleness(self.mode.staleness)
        if fed.privacy is not None:  # a server step aggregates buffer_size updates: the accountant's cohort
            cap = max(c.num_train for c in fed.data.clients)
            fed.privacy = PrivacyStep(fed.cfg.privacy, n, self.mode.buffer_size, fed.cfg.server.rounds, cap)

    def idle(self, state: ServerState) -> bool:
        tree = state.systems_state
        return not tree.get("in_flight") and len(tree.get("buffer", {})) < self.mode.buffer_size

    def _dispatch(self, state: ServerState, sim: AsyncState, clients: list[int]) -> tuple[list[InFlight], int, int]:
        """Send the current model to ``clients``; returns their entries (not trained yet) and the bytes sent
        (all, and the algorithm's part).

        Training waits until an entry's time is needed (:meth:`_train`), so that every client dispatched at
        one model version trains in one batch: they all start from the same model, and a busy client's own
        state cannot change, so the result is what training at dispatch would give. A client that goes
        offline before even its download and computation are done is never trained.
        """
        v = state.round
        plan = self.fed.plan(state, clients)
        out = []
        for c in clients:
            n = int(sim.repeats[c]) + 1 if int(sim.last_version[c]) == v else 0
            sim.last_version[c], sim.repeats[c] = v, n
            down = len(plan.payloads[c]) + len(plan.state_payloads.get(c, b""))
            earliest = sim.clock + self.duration(c, down, 0)
            offline = self.availability.offline_at(c, sim.clock)
            drops = offline < earliest
            out.append(InFlight(c, v, sim.clock, offline if drops else earliest, drops, down, repeat=n))
        sim.totals[0] += len(clients)
        return out, plan.bytes_down, plan.algorithm_bytes_down

    def _train(self, state: ServerState, entries: list[InFlight]) -> list[InFlight]:
        """Train the pending entries (all dispatched at ``state.round``) as one cohort on the engine and
        settle each one's arrival time with its real upload size (or its dropout, when it goes offline first)."""
        pending = [e for e in entries if e.pending]
        if not pending:
            return entries
        seed, v = self.fed.cfg.seed, state.round
        gens = {e.client: generator(seed, "client", v, e.client, *((e.repeat,) if e.repeat else ())) for e in pending}
        plan = self.fed.plan(state, [e.client for e in pending])
        replies, states = self.fed.local_round(state, plan, gens)
        done = {}
        for e, reply in zip(pending, replies):
            finish = e.start + self.duration(e.client, e.bytes_down, len(reply.payload) + len(reply.outbox))
            offline = self.availability.offline_at(e.client, e.start)
            if offline < finish:
                done[e.client] = replace(e, end=offline, drops=True)
            else:
                done[e.client] = replace(e, end=finish, reply=reply, state=states[e.client])
        return [done.get(e.client, e) if e.pending else e for e in entries]

    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]:
        """The events up to the next server step, then that step: the one round driver over :class:`Buffered`."""
        buffered = Buffered(self)
        new_state, report = self.fed.round(state, buffered, started=time.perf_counter())
        ev = buffered.events
        assert ev is not None  # dispatch ran
        new_state = replace(new_state, systems_state=ev.sim.to_tree())
        systems: dict[str, object] = {
            "virtual_time": ev.sim.clock,
            "staleness": {"mean": sum(ev.ages) / len(ev.ages), "max": max(ev.ages)} if ev.ages else {},
            **ev.counts,
            "in_flight": len(ev.sim.in_flight),
        }
        report = replace(report, systems=systems, skipped=report.skipped or ev.stuck)
        return new_state, report

    def events(self, state: ServerState) -> tuple[Dispatched, Events]:
        """Run the simulated events (dispatches, arrivals, dropouts) until ``buffer_size`` updates are buffered
        (or nothing more can arrive); returns the buffered replies to conclude and what happened."""
        fed, mode = self.fed, self.mode
        v = state.round
        sim = AsyncState.from_tree(state.systems_state, fed.data.num_clients)
        client_states = dict(state.client_states)
        dropped: dict[int, str] = {}
        bytes_down = alg_down = 0
        counts = {"dropped_offline": 0, "dropped_stale": 0, "dispatched": 0}
        stall, stall_limit = 0, max(100, STALL_FACTOR * mode.concurrency)
        stuck = ""
        while True:
            # an update may have aged past max_staleness while it waited in the buffer
            for e in [e for e in sim.buffer if self._too_stale(v - e.version)]:
                sim.buffer.remove(e)
                dropped[e.client] = f"stale: trained on version {e.version}, {v - e.version} server steps old (max_staleness {mode.max_staleness})"
                counts["dropped_stale"] += 1
            if len(sim.buffer) >= mode.buffer_size:
                break
            busy = {e.client for e in sim.in_flight} | {e.client for e in sim.buffer}
            free = mode.concurrency - len(sim.in_flight)
            if free > 0:
                idle = [c for c in self.availability.online(sim.clock) if c not in busy]
                if idle:
                    key = (v,) if sim.batch == 0 else (v, sim.batch)
                    chosen = sample_among(idle, free, generator(fed.cfg.seed, "cohort", *key))
                    sim.batch += 1
                    entries, down, alg = self._dispatch(replace(state, client_states=client_states), sim, chosen)
                    sim.in_flight += entries
                    bytes_down += down
                    alg_down += alg
                    counts["dispatched"] += len(chosen)
                    busy |= set(chosen)
            if stall >= stall_limit:
                stuck = f"{stall} dispatched clients in a row went offline before finishing (availability too short for their round time?)"
                break
            wake = self.availability.next_online(sim.clock, busy) if mode.concurrency - len(sim.in_flight) > 0 else math.inf
            if wake <= sim.clock:  # an idle client is online yet none was dispatched: cannot happen with free slots
                wake = math.inf
            nxt = min([e.end for e in sim.in_flight] + [wake])
            if any(e.pending and e.end <= nxt for e in sim.in_flight):  # its real arrival time is needed now
                sim.in_flight = self._train(replace(state, client_states=client_states), sim.in_flight)
                continue
            if math.isinf(nxt):
                stuck = f"no client is in flight or online at or after simulated time {sim.clock:.6g}s"
                break
            sim.clock = nxt
            for e in sorted((e for e in sim.in_flight if e.end <= nxt), key=lambda e: (e.end, e.client)):
                sim.in_flight.remove(e)
                if e.drops:
                    dropped[e.client] = f"went offline at t={e.end:.6g}s before finishing"
                    counts["dropped_offline"] += 1
                    stall += 1
                elif self._too_stale(v - e.version):
                    dropped[e.client] = f"stale: trained on version {e.version}, {v - e.version} server steps old (max_staleness {mode.max_staleness})"
                    counts["dropped_stale"] += 1
                else:
                    sim.buffer.append(e)
                    client_states[e.client] = e.state or ClientState()
                    stall = 0
        # the model moves on: whoever was dispatched on this version trains now (a checkpoint holds no pending one)
        sim.in_flight = self._train(replace(state, client_states=client_states), sim.in_flight)
        batch, sim.buffer = sim.buffer[: mode.buffer_size], sim.buffer[mode.buffer_size :]
        if stuck:  # no server step: the buffer waits for the next call (the run stops when nothing can ever arrive)
            sim.buffer = batch + sim.buffer
            batch = []
        ages = [v - e.version for e in batch]
        sim.totals[1] += counts["dropped_offline"]
        sim.totals[2] += counts["dropped_stale"]
        sim.batch = 0
        scale = {e.client: self.weight(s) for e, s in zip(batch, ages)}
        replies = [e.reply for e in batch if e.reply is not None]
        out = Dispatched(replies, client_states, dropped, cohort=[e.client for e in batch], bytes_down=bytes_down, algorithm_bytes_down=alg_down, scale=scale)
        return out, Events(sim, counts, ages, stuck)

    def _too_stale(self, age: int) -> bool:
        return self.mode.max_staleness is not None and age > self.mode.max_staleness
