"""Synchronous rounds on the simulated clock, with a deadline and over-selection (Bonawitz et al. 2019).

A round starts when the previous one ended (or, when nobody is online then, when somebody comes
online); the server samples ``ceil(K (1 + over_selection))`` of the online clients, each receives,
trains and uploads in its own time (:meth:`~fedmtl.fl.systems.profiles.Profiles.duration`), and the
server keeps the first ``K`` to finish. A client that goes offline before it has finished, or would
finish after the deadline, is dropped, with why, and so is every finisher beyond the first ``K``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fedmtl.config.systems import SyncMode, SystemsConfig
from fedmtl.fl.federation import Federation, RoundPlan, RoundReport, ServerState
from fedmtl.fl.sampling import sample_among
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems.driver import Driver, clock_of, clock_tree
from fedmtl.fl.transport import Delivery


@dataclass(frozen=True)
class Settled:
    """Who a synchronous round keeps, who it drops (and why), and when it ends (simulated seconds)."""

    kept: list[int]
    dropped: dict[int, str]
    end: float


def settle(
    start: float, finish: Mapping[int, float], offline: Mapping[int, float], keep: int, deadline: float | None = None
) -> Settled:
    """Decide a synchronous round from its clients' finish and offline times.

    Clients are taken in order of finish time (ties by id): one offline before it finishes is dropped, so is
    one finishing more than ``deadline`` after ``start``; the first ``keep`` of the others are kept, the rest
    dropped as over-selected. The round ends when the ``keep``-th kept client finishes; short of that, at
    the deadline, or without one when the last kept client finished or the last dropout went offline
    (whichever is later).

    Args:
        start: when the round began.
        finish: client -> when it would have uploaded its update.
        offline: client -> when it goes offline (``inf``: not before it finishes).
        keep: updates the round needs (K); at most ``len(finish)`` can arrive.
        deadline: seconds after ``start`` the server waits at most.
    """
    target = min(keep, len(finish))
    kept: list[int] = []
    dropped: dict[int, str] = {}
    for cid in sorted(finish, key=lambda c: (finish[c], c)):
        f = finish[cid]
        if offline[cid] < f:
            dropped[cid] = f"went offline at t={offline[cid]:.6g}s before finishing at t={f:.6g}s"
        elif deadline is not None and f - start > deadline:
            dropped[cid] = f"missed the round deadline of {deadline:.6g}s (would have taken {f - start:.6g}s)"
        elif len(kept) < target:
            kept.append(cid)
        else:
            dropped[cid] = f"over-selected: {target} other clients finished first"
    if len(kept) == target:
        end = max([finish[c] for c in kept], default=start)
    elif deadline is not None:
        end = start + deadline
    else:
        end = max([finish[c] for c in kept] + [offline[c] for c in dropped if offline[c] < finish[c]], default=start)
    return Settled(kept, dropped, end)


class OnTheClock:
    """The transport of a synchronous round on the simulated clock: the clients train in process, and
    :func:`settle` decides from their simulated finish and offline times whose replies the server keeps."""

    def __init__(self, driver: SyncRounds, start: float):
        self.driver = driver
        self.start = start
        self.settled = Settled([], {}, start)

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery:
        d = self.driver
        replies, states = d.fed.local_round(state, plan)
        finish, offline = {}, {}
        for reply in replies:
            cid = reply.client_id
            down = len(plan.payloads[cid]) + len(plan.state_payloads.get(cid, b""))
            finish[cid] = self.start + d.duration(cid, down, len(reply.payload) + len(reply.outbox))
            offline[cid] = d.availability.offline_at(cid, self.start)
        self.settled = settle(self.start, finish, offline, d.fed.cohort_size, d.mode.deadline)
        kept = set(self.settled.kept)
        return Delivery(
            [x for x in replies if x.client_id in kept],
            {**state.client_states, **{c: s for c, s in states.items() if c in kept}},
            self.settled.dropped,
        )


class SyncRounds(Driver):
    """Synchronous FedAvg-style rounds whose timing follows the simulated clients."""

    def __init__(self, cfg: SystemsConfig, fed: Federation):
        super().__init__(cfg, fed)
        assert isinstance(cfg.mode, SyncMode)
        self.mode: SyncMode = cfg.mode

    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]:
        fed = self.fed
        t0 = time.perf_counter()
        r = state.round
        start = self.availability.next_online(clock_of(state))
        if math.isinf(start):
            new_state, report = fed.conclude(state, [], state.client_states, cohort=[], bytes_down=0, started=t0)
            return new_state, replace(report, skipped="no client is online now or later", systems={"virtual_time": clock_of(state)})
        online = self.availability.online(start)
        k = fed.cohort_size
        selected = min(len(online), math.ceil(k * (1 + self.mode.over_selection)))
        cohort = sample_among(online, selected, generator(fed.cfg.seed, "cohort", r))
        clock = OnTheClock(self, start)
        new_state, report = fed.round(state, clock, cohort=cohort, started=t0)
        settled = clock.settled
        new_state = replace(new_state, systems_state=clock_tree(settled.end))
        systems: dict[str, object] = {"virtual_time": settled.end, "round_virtual_seconds": settled.end - start, "online": len(online), "selected": selected}
        return new_state, replace(report, systems=systems)
