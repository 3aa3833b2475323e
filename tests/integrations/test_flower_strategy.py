"""The server loop on an in-process grid that runs the real ClientApp: maths, failures, resume."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from _flower_fakes import SMALL, FakeClock, FakeGrid, simulate

from fedmtl.checked_file import read_checked
from fedmtl.config import config_from_dict
from fedmtl.integrations.flower import FlowerSettings, RoundFailed, make_client_app
from fedmtl.integrations.flower.node_state import experiment_key
from fedmtl.integrations.flower.server_app import server_for
from fedmtl.report.metrics_log import flatten as flatten_record
from fedmtl.runloop.checkpoint import load_latest

pytestmark = [pytest.mark.flower, pytest.mark.usefixtures("shared_partition_cache")]


def _config(tmp_path, algorithm=None, evaluation=None, momentum=None, **server):
    data = copy.deepcopy(SMALL)
    if momentum is not None:
        data["client"]["optimizer"]["momentum"] = momentum
    data["server"].update(server)
    if algorithm is not None:
        data["algorithm"] = algorithm
    if evaluation is not None:
        data["evaluation"].update(evaluation)
    data["output"]["dir"] = str(tmp_path)
    return config_from_dict(data)


def _flat(metrics):
    return {f"{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}


def _grid(behaviour=None):
    return FakeGrid(make_client_app(), {101: 0, 102: 1, 103: 2}, dict(behaviour or {}))


def _run(tmp_path, grid, name="flower", settings=None, cfg=None, **server):
    clock = FakeClock()
    settings = settings or FlowerSettings(min_nodes=3, round_timeout=30.0, poll_interval=0.5)
    server_obj = server_for(
        cfg or _config(tmp_path, **server), settings, grid, tmp_path / name, clock=clock, sleep=clock.sleep
    )
    return server_obj, server_obj.run(), clock


def test_deployment_loop_reproduces_the_simulation(tmp_path):
    cfg = _config(tmp_path)
    sim = simulate(cfg)
    _, summary, _ = _run(tmp_path, _grid())
    state, _ = load_latest(tmp_path / "flower")
    assert state.round == 3
    for name, value in sim.params.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-6, rtol=1e-5)
    assert _flat(summary["final_global"]) == pytest.approx(_flat(sim.summary["final_global"]))
    # each client got only the shared trunk and its own heads: per-group aggregation holds
    assert summary["clients"] == {"0": ["digit", "parity"], "1": ["digit"], "2": ["parity"]}
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert [h["bytes_up"] for h in history] == [h["bytes_up"] for h in sim.history]
    assert all(h["wire_bytes_up"] > h["bytes_up"] for h in history)


@pytest.mark.parametrize(
    "algorithm",
    [{"name": "scaffold"}, {"name": "ifca", "clusters": 2}, {"name": "fedem", "components": 2}, {"name": "mocha"}],
    ids=["scaffold", "ifca", "fedem", "mocha"],
)
def test_algorithms_with_server_state_reproduce_the_simulation(tmp_path, algorithm):
    cfg = _config(tmp_path, algorithm=algorithm, momentum=0.0)  # SCAFFOLD needs plain SGD
    sim = simulate(cfg)
    grid = _grid()
    _, summary, _ = _run(tmp_path, grid, cfg=cfg)
    state, _ = load_latest(tmp_path / "flower")
    assert state.round == 3
    for name, value in sim.params.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-6, rtol=1e-5)
    assert state.algorithm_state  # the server state moved on
    sim_state, _ = load_latest(sim.run_dir)
    torch.testing.assert_close(
        _flat_tree(state.algorithm_state),
        _flat_tree(sim_state.algorithm_state),
        atol=1e-6,
        rtol=1e-5,
    )
    assert _flat(summary["final_global"]) == pytest.approx(_flat(sim.summary["final_global"]))
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    # the server state travels encoded in each train message, counted exactly as the simulation counts it
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all("fedmtl.server-state" in m.content.array_records for m in train)
    for h, s in zip(history, sim.history, strict=True):
        assert h["algorithm_bytes_down"] > 0
        for key in ("bytes_down", "bytes_up", "algorithm_bytes_down", "algorithm_bytes_up"):
            assert h[key] == s.get(key, 0), key
        assert h["wire_bytes_down"] > h["bytes_down"]
    # what a node keeps on its disk has neither the server's state nor the outbox
    for path in _state_files():
        keys = read_checked(path)[0].keys()
        assert not any(k.startswith(("server/", "outbox/")) for k in keys)
    if algorithm["name"] == "scaffold":
        assert all(h["algorithm_bytes_up"] > 0 for h in history)  # each client's delta c


def _flat_tree(tree):
    from fedmtl.tree import flatten

    return flatten(tree)


def _state_files() -> list[Path]:
    return sorted(Path(os.environ["FEDMTL_FLOWER_STATE"]).glob("*/client-*.safetensors"))


def test_client_state_lives_in_a_checked_file_on_the_node_under_the_run_key(tmp_path):
    grid = _grid()
    server, _, _ = _run(tmp_path, grid)
    for ctx in grid.contexts.values():
        assert "fedmtl.config" in ctx.state.config_records
        assert ctx.state.config_records["fedmtl.config"]["run-key"] == server.run_key
    assert (tmp_path / "flower" / "run-key").read_text().strip() == server.run_key
    files = _state_files()
    assert [p.name for p in files] == ["client-0.safetensors", "client-1.safetensors", "client-2.safetensors"]
    cfg = server.cfg
    assert {p.parent.name for p in files} == {experiment_key(cfg, server.run_key)}
    for i, path in enumerate(files):
        _, meta = read_checked(path)
        assert (meta["partition"], meta["rounds"]) == (str(i), "3")


def test_a_client_that_raises_is_dropped_and_the_round_completes(tmp_path):
    server, summary, _ = _run(
        tmp_path, _grid({102: "raise"}), settings=FlowerSettings(min_nodes=3, min_replies=2)
    )
    assert summary["rounds_completed"] == 3
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["replies"] == 2 and "injected failure" in h["dropped"]["1"] for h in history)


def test_a_silent_client_times_out_and_is_quarantined(tmp_path):
    settings = FlowerSettings(
        min_nodes=3, min_replies=2, round_timeout=10.0, quarantine_rounds=5, poll_interval=0.5
    )
    _, summary, clock = _run(tmp_path, _grid({103: "silent"}), settings=settings)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert "no reply within 10 s" in history[0]["dropped"]["2"]
    assert [h["cohort_size"] for h in history] == [3, 2, 2]  # left out after timing out
    assert clock.now == pytest.approx(10.0, abs=1.0)  # only the first round waited
    assert summary["rounds_completed"] == 3


def test_below_the_minimum_the_round_is_retried_then_the_run_stops_and_resumes(tmp_path):
    grid = _grid()
    settings = FlowerSettings(
        min_nodes=3, min_replies=3, round_timeout=5.0, max_retries=1, quarantine_rounds=0
    )
    server = server_for(
        _config(tmp_path), settings, grid, tmp_path / "flower", clock=(c := FakeClock()), sleep=c.sleep
    )
    state = server.fed.init_state()
    server.wait_for_nodes()
    state, _ = server.run_round(state)  # round 1 with everyone
    from fedmtl.runloop.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "flower", state, {})
    (tmp_path / "flower" / "metrics.jsonl").write_text("")
    grid.behaviour[103] = "silent"
    with pytest.raises(RoundFailed, match="round 2 failed.*resume"):
        server.run_round(state)
    # leaving out the node that timed out would leave too few clients, so the retry asks all three again
    assert sum(1 for m in grid.sent if m.metadata.group_id == "2") == 3 + 3
    # the node comes back; a restarted server resumes from the round-1 checkpoint and finishes
    grid.behaviour.clear()
    _, summary, _ = _run(tmp_path, grid, settings=FlowerSettings(min_nodes=3))
    assert summary["rounds_completed"] == 3
    _, uninterrupted, _ = _run(tmp_path, _grid(), name="clean")
    assert _flat(summary["final_global"]) == pytest.approx(_flat(uninterrupted["final_global"]))


def test_an_offline_node_is_not_waited_for(tmp_path):
    grid = _grid()
    settings = FlowerSettings(min_nodes=3, min_replies=2, round_timeout=60.0)
    server = server_for(
        _config(tmp_path), settings, grid, tmp_path / "flower", clock=(c := FakeClock()), sleep=c.sleep
    )
    server.wait_for_nodes()
    grid.behaviour[101] = "offline"
    state, record = server.run_round(server.fed.init_state())
    assert record["cohort_size"] == 2 and record["replies"] == 2 and c.now < 1.0


def test_deployment_refuses_what_it_cannot_carry():
    import pytest

    from fedmtl.config import config_from_dict
    from fedmtl.data import build_federated_data
    from fedmtl.fl.federation import Federation
    from fedmtl.integrations.flower.strategy import check_deployable
    from fedmtl.mtl import build_model

    def fed_for(extra):
        cfg = config_from_dict({"data": {"source": {"name": "digits"}, "num_clients": 4, "partition": {"name": "iid"}}, **extra})
        data = build_federated_data(cfg.data, 0)
        return Federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks))

    check_deployable(fed_for({}))
    # secure aggregation runs over the grid as message exchanges (test_flower_secagg.py)
    check_deployable(fed_for({"privacy": {"secure_aggregation": {}}}))
    # algorithms with server state are carried now (the train message holds the state, the reply the outbox)
    check_deployable(fed_for({"algorithm": {"name": "scaffold"}}))
    # the simulator's clock has no meaning on a deployment: refused, not silently ignored
    with pytest.raises(ValueError, match="systems .*refused here"):
        check_deployable(fed_for({"systems": {"mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 3}}}))
    # EF21's server mirrors of the clients' estimates are not kept on Flower: refused, not silently wrong
    ef21 = {"comm": {"uplink": [{"name": "topk", "fraction": 0.1, "error_feedback": False}], "uplink_ef21": True}}
    with pytest.raises(ValueError, match="uplink_ef21 .*refused here"):
        check_deployable(fed_for(ef21))


@pytest.mark.parametrize(
    "algorithm",
    [{"name": "fedper"}, {"name": "scaffold"}, {"name": "fedem", "components": 2}],
    ids=["fedper", "scaffold", "fedem"],  # fedem: a mixture of models, evaluated on the node too
)
def test_personalised_evaluation_on_the_nodes_matches_the_simulation(tmp_path, algorithm):
    cfg = _config(tmp_path, algorithm=algorithm, momentum=0.0, evaluation={"personalized": True})
    sim = simulate(cfg)
    grid = _grid()
    _, summary, _ = _run(tmp_path, grid, cfg=cfg)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert [m.metadata.message_type for m in grid.sent].count("evaluate") == 3 * 3  # every node, every round
    for h, s in zip(history, sim.history, strict=True):
        assert set(h["personalized"]) == set(s["personalized"]) == {"digit", "parity"}
        assert flatten_record(h["personalized"]) == pytest.approx(flatten_record(s["personalized"]), abs=1e-6)  # pooled, median, worst 10 %
        assert h["personalized_evaluation"]["missing"] == {}
        assert h["personalized_evaluation"]["wire_bytes_up"] > 0
    final, sim_final = summary["final_personalized"], sim.summary["final_personalized"]
    assert flatten_record(final) == pytest.approx(flatten_record(sim_final), abs=1e-6)
    assert json.loads((tmp_path / "flower" / "clients.json").read_text())[0]["client"] == 0


def test_a_node_that_fails_evaluation_is_left_out_of_the_personalised_block(tmp_path):
    cfg = _config(tmp_path, evaluation={"personalized": True})
    grid = _grid({103: "raise"})
    settings = FlowerSettings(min_nodes=3, min_replies=2, round_timeout=30.0)
    _, summary, _ = _run(tmp_path, grid, cfg=cfg, settings=settings)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    for h in history:
        assert "injected failure" in h["personalized_evaluation"]["missing"]["2"]
        assert set(h["personalized"]) == {"digit", "parity"}  # client 0 still reports parity
    rows = json.loads((tmp_path / "flower" / "clients.json").read_text())
    assert [r["client"] for r in rows] == [0, 1]


def test_an_offline_node_is_named_missing_in_the_personalised_evaluation(tmp_path):
    grid = _grid()
    settings = FlowerSettings(min_nodes=3, min_replies=2, round_timeout=60.0)
    cfg = _config(tmp_path, evaluation={"personalized": True})
    server = server_for(cfg, settings, grid, tmp_path / "flower", clock=(c := FakeClock()), sleep=c.sleep)
    server.wait_for_nodes()
    state, _ = server.run_round(server.fed.init_state())
    grid.behaviour[102] = "offline"
    summary, rows, info = server.evaluate_personalized(state)
    assert info["missing"] == {"1": "node offline"}
    assert [r["client"] for r in rows] == [0, 2] and summary["digit"]["pooled"]


def test_the_privacy_budget_stops_the_deployment_as_it_stops_the_simulation(tmp_path, monkeypatch):
    """A round the budget forbids is not run: the run ends early, checkpointed, and says why."""
    from fedmtl.fl.federation import Federation

    cfg = _config(tmp_path)
    cfg = config_from_dict({**cfg.model_dump(mode="json"), "privacy": {"dp": {"clip_norm": 1.0, "target_epsilon": 8.0}}})
    # sigma is set for the planned rounds, so the budget binds only when a run is extended: pretend it does after round 2
    monkeypatch.setattr(Federation, "can_run_round", lambda self, state: state.round < 2)
    _, summary, _ = _run(tmp_path, _grid(), cfg=cfg)
    assert summary["rounds_completed"] == 2
    assert summary["stopped_early"] == "privacy budget: another round would exceed target epsilon 8.0"
    state, _ = load_latest(tmp_path / "flower")
    assert state.round == 2


def test_dp_sgd_client_epsilon_is_reported_as_in_the_simulation(tmp_path):
    cfg = _config(tmp_path, momentum=0.0)
    cfg = config_from_dict({**cfg.model_dump(mode="json"), "privacy": {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}})
    sim = simulate(cfg)
    _run(tmp_path, _grid(), cfg=cfg)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    eps = [h["privacy"]["dp_sgd_max_client_epsilon"] for h in history]
    assert eps == pytest.approx([h["privacy"]["dp_sgd_max_client_epsilon"] for h in sim.history])


def test_the_server_leaves_the_federation_it_was_given_unchanged(tmp_path):
    """Registration builds the server's own Federation over the reported task sets (issue 16): the one it was
    given keeps its data, population, groups and sample bounds, and no private method of it is called."""
    clock = FakeClock()
    settings = FlowerSettings(min_nodes=3, round_timeout=30.0, poll_interval=0.5)
    server = server_for(_config(tmp_path), settings, _grid(), tmp_path / "flower", clock=clock, sleep=clock.sleep)
    given = server.template
    data, population, groups = given.data, dict(given.population), dict(given.groups)
    server.run()
    assert given.data is data and given.population == population and given.groups == groups
    assert given.known_samples == {}
    assert server.fed is not given
    assert [c.tasks for c in server.fed.data.clients] == [("digit", "parity"), ("digit",), ("parity",)]
    assert sorted(server.fed.known_samples) == [0, 1, 2] and all(n > 0 for n in server.fed.known_samples.values())
    # the heads' population follows the reported task sets: each head is uploaded by the two clients holding it
    heads = {n: k for n, k in server.fed.population.items() if n.startswith("heads.")}
    assert heads and set(heads.values()) == {2}
def test_local_on_flower_reports_no_global_metrics_as_the_simulation(tmp_path):
    """Algorithm local trains no global model: the deployment, like the simulation, scores none and says why."""
    cfg = _config(tmp_path, algorithm={"name": "local"}, evaluation={"personalized": True})
    _, summary, _ = _run(tmp_path, _grid(), cfg=cfg)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["global"] == {} for h in history)
    assert summary["final_global"] == {} and "not trained" in summary["global_model"]
    assert set(summary["final_personalized"]) == {"digit", "parity"}  # the clients' own models, per task
