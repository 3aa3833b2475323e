"""Synchronous rounds on the clock: hand-computed round times, deadlines, over-selection, dropouts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedmtl.fl.federation import Federation
from fedmtl.fl.sampling import sample_cohort
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems import clock_of, settle


def test_settle_keeps_the_first_k_and_drops_the_rest_with_reasons() -> None:
    finish = {0: 3.0, 1: 1.0, 2: 2.0, 3: 9.0, 4: 2.5}
    offline = {0: math.inf, 1: math.inf, 2: 1.5, 3: math.inf, 4: math.inf}
    s = settle(0.0, finish, offline, keep=2, deadline=5.0)
    assert s.kept == [1, 4]  # 2 went offline at 1.5 before finishing at 2.0
    assert set(s.dropped) == {0, 2, 3}
    assert "offline" in s.dropped[2] and "deadline" in s.dropped[3] and "over-selected" in s.dropped[0]
    assert s.end == 2.5  # the second kept client's finish


def test_settle_without_enough_finishers_waits_for_the_deadline() -> None:
    s = settle(10.0, {0: 11.0, 1: 30.0, 2: 12.0}, {0: math.inf, 1: math.inf, 2: 11.5}, keep=3, deadline=5.0)
    assert s.kept == [0] and len(s.dropped) == 2 and s.end == 15.0
    # no deadline: it ends with the last finisher or dropout it waited for
    s = settle(10.0, {0: 11.0, 2: 12.0}, {0: math.inf, 2: 11.5}, keep=3)
    assert s.kept == [0] and s.end == 11.5


def expected_time(driver, fed, state, cohort) -> float:  # type: ignore[no-untyped-def]
    """max over the cohort of E * rows / speed + (down + up bytes) / bandwidth, from the real payloads."""
    plan = fed.plan(state, cohort)
    times = []
    for cid in cohort:
        names = fed.algorithm.uploaded_names(fed.model, fed.data.clients[cid])
        up, _ = fed.up.encode({n: torch.zeros(fed.shapes[n]) for n in names}, {}, None)  # identity: size depends on shapes only
        rows = fed.cfg.client.epochs * fed.data.clients[cid].num_train
        times.append(rows / 50.0 + (len(plan.payloads[cid]) + len(up)) / 20000.0)
    return max(times)


def test_round_time_is_the_slowest_clients_hand_computed_time(build) -> None:  # type: ignore[no-untyped-def]
    driver, fed = build({"clients": {"speed": {"name": "constant", "value": 50}, "bandwidth": {"name": "constant", "value": 20000}}})
    state = driver.init_state()
    cohort = sample_cohort(8, 4, generator(0, "cohort", 0))
    t1 = expected_time(driver, fed, state, cohort)
    state, report = driver.round(state)
    assert report.cohort == cohort and report.dropped == {}
    assert report.systems["virtual_time"] == pytest.approx(t1, rel=1e-12) and clock_of(state) == pytest.approx(t1)
    cohort = sample_cohort(8, 4, generator(0, "cohort", 1))
    t2 = expected_time(driver, fed, state, cohort)
    state, report = driver.round(state)
    assert report.systems["virtual_time"] == pytest.approx(t1 + t2, rel=1e-12)


def test_everyone_online_and_no_deadline_is_the_plain_round(build) -> None:  # type: ignore[no-untyped-def]
    driver, fed = build({})
    plain = Federation(fed.cfg, fed.data, fed.model, fed.engine)
    a, b = driver.init_state(), plain.init_state()
    for _ in range(2):
        a, _ = driver.round(a)
        b, _ = plain.round(b)
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_over_selection_samples_more_and_keeps_k(build) -> None:  # type: ignore[no-untyped-def]
    fast_net = {"name": "constant", "value": 1e12}  # compute alone orders the clients
    driver, fed = build({"clients": {"speed": {"name": "lognormal", "median": 100, "sigma": 1}, "bandwidth": fast_net}, "mode": {"name": "sync", "over_selection": 0.5}})
    state = driver.init_state()
    for _ in range(2):
        state, report = driver.round(state)
        assert len(report.cohort) == 6 and report.systems["selected"] == 6  # ceil(4 * 1.5)
        assert len(report.dropped) == 2 and all("over-selected" in why for why in report.dropped.values())
        kept = [c for c in report.cohort if c not in report.dropped]
        assert min(driver.duration(c, 0, 0) for c in report.dropped) >= max(driver.duration(c, 0, 0) for c in kept)


def test_deadline_drops_the_clients_that_would_finish_late(build) -> None:  # type: ignore[no-untyped-def]
    driver, fed = build(
        {"clients": {"speed": {"name": "lognormal", "median": 100, "sigma": 1.5}, "bandwidth": {"name": "constant", "value": 1e12}}, "mode": {"name": "sync", "deadline": 0.6}}
    )
    state = driver.init_state()
    total = 0
    for r in range(3):
        cohort = sample_cohort(8, 4, generator(0, "cohort", r))
        late = {c for c in cohort if driver.duration(c, 0, 0) > 0.6 + 1e-6}
        start = clock_of(state)
        state, report = driver.round(state)
        assert set(report.dropped) == late and all("deadline" in report.dropped[c] for c in late)
        assert report.systems["virtual_time"] == pytest.approx(start + 0.6 if late else start + max(driver.duration(c, 0, 0) for c in cohort), rel=1e-6)
        total += len(late)
    assert total > 0  # sigma 1.5 leaves stragglers


def test_only_online_clients_are_sampled_and_dropouts_counted(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "avail.csv"
    # clients 1, 3, 5, 6 online from 0; 6 goes offline at 0.5 s (a round takes longer); 2 comes online at 100 s
    trace.write_text("client,start,end\n1,0,1000\n3,0,1000\n5,0,1000\n6,0,0.5\n2,100,1000\n")
    driver, fed = build(
        {"clients": {"speed": {"name": "constant", "value": 50}}, "availability": {"name": "trace", "path": str(trace)}},
        server={"clients_per_round": 4},
    )
    state = driver.init_state()
    state, report = driver.round(state)
    assert report.cohort == [1, 3, 5, 6]
    assert list(report.dropped) == [6] and "went offline at t=0.5s" in report.dropped[6]
    state, report = driver.round(state)
    assert report.cohort == [1, 3, 5] and report.dropped == {}


def test_an_interrupted_sync_run_resumes_on_the_same_clock(tmp_path: Path) -> None:
    from _systems_helpers import small_config

    from fedmtl.config import config_from_dict
    from fedmtl.experiment import Experiment

    systems = {
        "clients": {"speed": {"name": "lognormal", "median": 50, "sigma": 1.0}},
        "availability": {"name": "daily", "period": 20, "on_fraction": 0.6},
        "mode": {"name": "sync", "deadline": 3, "over_selection": 0.5},
    }

    def run(name: str, rounds: int, resume: bool = False):  # type: ignore[no-untyped-def]
        cfg = small_config(tmp_path, systems, server={"rounds": rounds}, output={"name": name})
        return Experiment(config_from_dict(cfg)).run(resume=str(tmp_path / "runs" / name) if resume else None, progress=False)

    whole = run("whole", 4)
    run("cut", 2)
    resumed = run("cut", 4, resume=True)
    assert [r["virtual_time"] for r in resumed.history] == [r["virtual_time"] for r in whole.history]
    assert [r["dropped"] for r in resumed.history] == [r["dropped"] for r in whole.history]
    for n, p in whole.params.items():
        assert torch.equal(p, resumed.params[n]), n
