"""FedBuff (Nguyen et al. 2022) on the simulated clock: equal to FedAvg without staleness, staleness
bounds, composition with codecs, per-group aggregation, server optimisers and DP, and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _systems_helpers import small_config

from fedmtl.config import ConfigError, config_from_dict
from fedmtl.experiment import Experiment
from fedmtl.fl.federation import Federation
from fedmtl.fl.systems import FedBuff


def equal_time_trace(build, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A speed trace under which every client trains for exactly one second (speed = its rows per round)."""
    _, fed = build({}, data={"partition": {"name": "iid"}})
    path = tmp_path / "speeds.csv"
    rows = [f"{c.client_id},{fed.cfg.client.epochs * c.num_train},1000000" for c in fed.data.clients]
    path.write_text("client,speed,bandwidth\n" + "\n".join(rows) + "\n")
    return str(path)


def test_fedbuff_with_the_cohort_as_buffer_and_no_staleness_is_fedavg(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trace = equal_time_trace(build, tmp_path)
    mode = {"name": "fedbuff", "buffer_size": 4, "concurrency": 4, "staleness": {"name": "polynomial", "a": 0.5}}
    driver, fed = build({"clients": {"trace": trace}, "mode": mode}, data={"partition": {"name": "iid"}})
    assert isinstance(driver, FedBuff)
    plain = Federation(fed.cfg, fed.data, fed.model, fed.engine)
    a, b = driver.init_state(), plain.init_state()
    for _ in range(3):
        a, ra = driver.round(a)
        b, rb = plain.round(b)
        assert ra.cohort == rb.cohort and ra.systems["staleness"] == {"mean": 0.0, "max": 0}
        assert ra.bytes_down == rb.bytes_down and ra.bytes_up == rb.bytes_up
    assert a.round == b.round == 3
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n]), n
    # every step took one simulated second plus the transfer of the same bytes
    assert ra.systems["virtual_time"] == pytest.approx(3 * (1 + 2 * len(fed.plan(b, [0]).payloads[0]) / 1e6))


def test_stale_updates_are_down_weighted_and_dropped_beyond_max_staleness(build) -> None:  # type: ignore[no-untyped-def]
    speeds = {"speed": {"name": "lognormal", "median": 100, "sigma": 1.5}}
    driver, _ = build({"clients": speeds, "mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 6, "max_staleness": 0}})
    state = driver.init_state()
    dropped = 0
    for _ in range(4):
        state, report = driver.round(state)
        assert report.systems["staleness"]["max"] == 0 and len(report.cohort) == 2
        assert report.systems["in_flight"] <= 6
        dropped += report.systems["dropped_stale"]
        assert sum("stale" in why for why in report.dropped.values()) <= report.systems["dropped_stale"]
    assert dropped > 0
    # without the bound, the same federation aggregates stale updates
    driver, _ = build({"clients": speeds, "mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 6}})
    state = driver.init_state()
    ages = []
    for _ in range(4):
        state, report = driver.round(state)
        ages.append(report.systems["staleness"]["max"])
    assert max(ages) > 0


def test_conclude_scales_each_update_by_its_weight(build) -> None:  # type: ignore[no-untyped-def]
    """The server step of a buffer whose updates are all weighted 0.5 is half the unweighted step (FedAvg, lr 1)."""
    _, fed = build({})
    state = fed.init_state()
    plan = fed.plan(state, [0, 2, 5])
    replies, states = fed.local_round(state, plan)
    whole, _ = fed.conclude(state, replies, states, cohort=plan.cohort, bytes_down=0)
    half, _ = fed.conclude(state, replies, states, cohort=plan.cohort, bytes_down=0, scale={0: 0.5, 2: 0.5, 5: 0.5})
    for n in state.params:
        torch.testing.assert_close(half.params[n] - state.params[n], 0.5 * (whole.params[n] - state.params[n]))


def run(tmp_path: Path, name: str, rounds: int, resume: bool = False, **over: Any):  # type: ignore[no-untyped-def]
    systems = {
        "clients": {"speed": {"name": "lognormal", "median": 100, "sigma": 1.0}, "bandwidth": {"name": "lognormal", "median": 2e5, "sigma": 1.0}},
        "availability": {"name": "daily", "period": 30, "on_fraction": 0.8},
        "mode": {"name": "fedbuff", "buffer_size": 3, "concurrency": 5, "max_staleness": 4},
    }
    cfg = small_config(tmp_path, systems, **over)
    cfg["server"] = {**cfg["server"], "rounds": rounds}
    cfg["output"] = {**cfg["output"], "name": name}
    return Experiment(config_from_dict(cfg)).run(resume=cfg["output"]["dir"] + "/" + name if resume else None, progress=False)


def test_interrupted_fedbuff_run_resumes_to_the_same_parameters(tmp_path: Path) -> None:
    comm = {"comm": {"uplink": [{"name": "topk", "fraction": 0.2}], "downlink": [{"name": "int8"}]}}
    whole = run(tmp_path, "whole", 5, **comm)
    run(tmp_path, "cut", 2, **comm)  # stops after two server steps, clients still in flight
    resumed = run(tmp_path, "cut", 5, resume=True, **comm)
    assert [r["virtual_time"] for r in resumed.history] == [r["virtual_time"] for r in whole.history]
    assert [r["cohort_size"] for r in resumed.history] == [r["cohort_size"] for r in whole.history]
    assert any(r["in_flight"] > 0 for r in whole.history)
    for n, p in whole.params.items():
        assert torch.equal(p, resumed.params[n]), n
    assert whole.summary["virtual_time"] == whole.history[-1]["virtual_time"] > 0


def test_fedbuff_composes_with_codecs_heads_server_optimiser_and_dp(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "composed",
        3,
        data={"task_assignment": {"name": "random_subset", "tasks_per_client": 1}},
        server={"optimizer": {"name": "fedadam", "lr": 0.01}},
        comm={"uplink": [{"name": "qsgd", "levels": 4}]},
        privacy={"dp": {"clip_norm": 1.0, "noise_multiplier": 0.5}},
    )
    assert res.summary["rounds_completed"] == 3
    assert all(torch.isfinite(p).all() for p in res.params.values())
    assert res.history[-1]["privacy"]["epsilon"] > 0
    assert all(r["cohort_size"] == 3 for r in res.history)


def test_fedbuff_refuses_algorithms_with_a_server_step(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, {"mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 4}})
    cfg["algorithm"] = {"name": "scaffold"}
    cfg["client"]["optimizer"] = {"name": "sgd", "lr": 0.1, "momentum": 0}
    with pytest.raises(ConfigError, match="fedbuff' cannot run algorithm 'scaffold'"):
        config_from_dict(cfg)
    cfg = small_config(tmp_path, {"mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 40}})
    with pytest.raises(ConfigError, match="concurrency=40 exceeds data.num_clients=8"):
        config_from_dict(cfg)


def test_a_run_stops_when_nobody_will_come_online_again(tmp_path: Path) -> None:
    trace = tmp_path / "avail.csv"
    trace.write_text("client,start,end\n0,0,0.01\n1,0,0.01\n")  # online for 10 ms: nobody can finish
    cfg = small_config(tmp_path, {"availability": {"name": "trace", "path": str(trace)}, "mode": {"name": "fedbuff", "buffer_size": 1, "concurrency": 2}})
    res = Experiment(config_from_dict(cfg)).run(progress=False)
    assert "no client is online" in res.summary["stopped_early"]
    assert res.history[0]["dropped_offline"] == 2 and res.history[0]["skipped"]


def test_fedbuff_dispatches_only_online_clients(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "avail.csv"
    trace.write_text("client,start,end\n" + "".join(f"{c},0,1000000\n" for c in (1, 2, 5, 7)))
    driver, _ = build({"availability": {"name": "trace", "path": str(trace)}, "mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 3}})
    state = driver.init_state()
    seen: set[int] = set()
    for _ in range(4):
        state, report = driver.round(state)
        seen |= set(report.cohort)
        assert report.systems["in_flight"] <= 3
    assert seen <= {1, 2, 5, 7} and len(seen) > 2
