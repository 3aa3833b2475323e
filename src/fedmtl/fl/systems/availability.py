"""Who is online when: always, a daily on/off cycle with a phase per client, or a trace of intervals.

Each model answers three questions on the simulated clock (seconds): who is online at ``t``; when an
online client goes offline (``inf``: never); and the earliest time from ``t`` on when anybody is online
(``inf``: never again). The round drivers sample only online clients and drop a client that goes offline
before it has uploaded.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection
from typing import Protocol

import torch

from fedmtl.config.systems import AlwaysAvailable, DailyAvailability, TraceAvailability
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems.profiles import PHASE
from fedmtl.fl.systems.traces import read_availability_trace

INF = math.inf


class Availability(Protocol):
    def online(self, t: float) -> list[int]:
        """The clients online at ``t``, in increasing order."""
        ...

    def offline_at(self, client: int, t: float) -> float:
        """When ``client``, online at ``t``, goes offline (``inf``: never)."""
        ...

    def next_online(self, t: float, exclude: Collection[int] = ()) -> float:
        """The earliest time ``>= t`` at which some client not in ``exclude`` is online (``inf``: never again)."""
        ...


class Always:
    """Every client online all the time."""

    def __init__(self, num_clients: int):
        self.num_clients = num_clients

    def online(self, t: float) -> list[int]:
        return list(range(self.num_clients))

    def offline_at(self, client: int, t: float) -> float:
        return INF

    def next_online(self, t: float, exclude: Collection[int] = ()) -> float:
        return t if len(set(exclude) & set(range(self.num_clients))) < self.num_clients else INF


class Daily:
    """Client ``c`` is online while ``(t + phase_c) mod period < on_fraction * period``; ``phase_c`` is
    uniform in ``[0, period)``, drawn from the client's own generator."""

    def __init__(self, num_clients: int, period: float, on_fraction: float, seed: int):
        self.period = period
        self.on = on_fraction * period
        self.phase = [
            float(torch.rand((), generator=generator(seed, "systems", PHASE, c), dtype=torch.float64)) * period
            for c in range(num_clients)
        ]

    def _position(self, client: int, t: float) -> float:
        return math.fmod(t + self.phase[client], self.period)

    def _is_online(self, client: int, t: float) -> bool:
        return self._position(client, t) < self.on

    def _settle(self, client: int, t: float, online: bool) -> float:
        """``t``, moved up by a few ulps until ``client`` reads as ``online`` there: a boundary computed in
        floating point may land a hair before the switch."""
        for _ in range(64):
            if self._is_online(client, t) == online:
                return t
            t = math.nextafter(t, INF)
        return t

    def online(self, t: float) -> list[int]:
        return [c for c in range(len(self.phase)) if self._is_online(c, t)]

    def offline_at(self, client: int, t: float) -> float:
        if self.on >= self.period:
            return INF
        return self._settle(client, t + (self.on - self._position(client, t)), online=False)

    def next_online(self, t: float, exclude: Collection[int] = ()) -> float:
        skip = set(exclude)
        times = [
            t if self._is_online(c, t) else self._settle(c, t + self.period - self._position(c, t), online=True)
            for c in range(len(self.phase))
            if c not in skip
        ]
        return min(times, default=INF)


class Trace:
    """Online within each client's listed ``[start, end)`` intervals."""

    def __init__(self, intervals: list[list[tuple[float, float]]]):
        self.intervals = intervals
        self.starts = [[s for s, _ in spans] for spans in intervals]

    def _span(self, client: int, t: float) -> tuple[float, float] | None:
        i = bisect.bisect_right(self.starts[client], t) - 1
        if i >= 0 and self.intervals[client][i][1] > t:
            return self.intervals[client][i]
        return None

    def online(self, t: float) -> list[int]:
        return [c for c in range(len(self.intervals)) if self._span(c, t) is not None]

    def offline_at(self, client: int, t: float) -> float:
        span = self._span(client, t)
        return span[1] if span is not None else t

    def next_online(self, t: float, exclude: Collection[int] = ()) -> float:
        best = INF
        skip = set(exclude)
        for c, spans in enumerate(self.intervals):
            if c in skip:
                continue
            if self._span(c, t) is not None:
                return t
            i = bisect.bisect_right(self.starts[c], t)
            if i < len(spans):
                best = min(best, spans[i][0])
        return best


def build_availability(cfg: AlwaysAvailable | DailyAvailability | TraceAvailability, num_clients: int, seed: int) -> Availability:
    """The model a ``systems.availability`` config names."""
    if isinstance(cfg, DailyAvailability):
        return Daily(num_clients, cfg.period, cfg.on_fraction, seed)
    if isinstance(cfg, TraceAvailability):
        return Trace(read_availability_trace(cfg.path, num_clients))
    return Always(num_clients)
