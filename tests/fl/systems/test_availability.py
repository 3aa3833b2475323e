"""Availability models: who is online when, when they drop, and sampling only among the online."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.config.systems import TraceAvailability
from fedmtl.fl.sampling import sample_among, sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems import Always, Daily, build_availability
from fedmtl.fl.systems.profiles import PHASE


def test_always_online() -> None:
    a = Always(4)
    assert a.online(123.0) == [0, 1, 2, 3]
    assert a.offline_at(2, 5.0) == math.inf
    assert a.next_online(7.0) == 7.0
    assert a.next_online(7.0, exclude={0, 1, 2, 3}) == math.inf


def test_daily_follows_the_phase_of_each_client() -> None:
    d = Daily(6, period=100.0, on_fraction=0.25, seed=3)
    phases = [float(torch.rand((), generator=generator(3, "systems", PHASE, c), dtype=torch.float64)) * 100 for c in range(6)]
    assert d.phase == phases
    for t in (0.0, 10.0, 55.5, 99.0, 250.0):
        expected = [c for c in range(6) if (t + phases[c]) % 100.0 < 25.0]
        assert d.online(t) == expected
        for c in expected:  # offline when its position reaches 25 s into the cycle
            assert d.offline_at(c, t) == pytest.approx(t + 25.0 - (t + phases[c]) % 100.0)
            assert c not in d.online(d.offline_at(c, t))
    # the next client to come online: the smallest wait until a cycle restarts
    t = 10.0
    waits = [0.0 if (t + p) % 100 < 25 else 100 - (t + p) % 100 for p in phases]
    assert d.next_online(t) == pytest.approx(t + min(waits))


def test_daily_with_full_on_fraction_is_always_online() -> None:
    d = Daily(3, period=10.0, on_fraction=1.0, seed=0)
    assert d.online(3.3) == [0, 1, 2] and d.offline_at(1, 3.3) == math.inf


def trace(tmp_path: Path, text: str, n: int = 3):  # type: ignore[no-untyped-def]
    path = tmp_path / "avail.csv"
    path.write_text(text)
    return build_availability(TraceAvailability(path=str(path)), n, 0)


def test_trace_intervals(tmp_path: Path) -> None:
    a = trace(tmp_path, "client,start,end\n0,0,10\n0,10,15\n1,5,8\n1,20,30\n")  # client 0: [0,15) merged; 2: never
    assert a.online(0.0) == [0] and a.online(6.0) == [0, 1] and a.online(15.0) == [] and a.online(25.0) == [1]
    assert a.offline_at(0, 3.0) == 15.0 and a.offline_at(1, 21.0) == 30.0
    assert a.next_online(15.0) == 20.0 and a.next_online(30.0) == math.inf
    assert a.next_online(6.0, exclude={0, 1}) == math.inf and a.next_online(0.0, exclude={0}) == 5.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("client,begin,end\n0,0,1\n", "expected exactly"),
        ("client,start,end\n0,5,5\n", "line 2: interval end 5.0 must come after start 5.0"),
        ("client,start,end\n0,-1,5\n", "start '-1' must be a finite number >= 0"),
        ("client,start,end\n3,0,5\n", "client 3 is out of range; allowed: 0..2"),
    ],
)
def test_bad_availability_traces_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trace(tmp_path, text)


def test_sampling_among_online_clients() -> None:
    online = [1, 4, 6, 9]
    for r in range(20):
        c = sample_among(online, 2, generator(0, "cohort", r))
        assert len(c) == 2 and set(c) <= set(online) and c == sorted(c)
    assert sample_among(online, 10, generator(0, "cohort", 0)) == online  # fewer online than asked: all of them
    # over every client it is the plain cohort draw (a run with everyone online samples what it did before)
    for r in range(5):
        assert sample_among(range(30), 7, generator(1, "cohort", r)) == sample_cohort(30, 7, generator(1, "cohort", r))
