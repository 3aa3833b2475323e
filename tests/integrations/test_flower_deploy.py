"""End to end on Flower's runtime: a real SuperLink and SuperNodes as processes on 127.0.0.1.

Slow (about a minute each on 2 cores); select with ``-m flower`` or leave out with ``-m "not slow"``.
The SuperNodes run warm ClientApp workers (``fedmtl.integrations.flower.worker``) except in the resume
test, which keeps Flower's stock path (a fresh ``flwr-clientapp`` per message) covered.
Every process runs under a hard time limit and is killed at the end, pass or fail.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import ssl
from pathlib import Path

import pytest
import yaml
from _flower_fakes import SMALL

from fedmtl.checked_file import read_checked
from fedmtl.experiment import Experiment
from fedmtl.integrations.flower.launch import LocalFederation, copy_app, wait_until

pytestmark = [pytest.mark.flower, pytest.mark.slow]
APP = Path(__file__).resolve().parents[2] / "examples" / "flower_app"


def _experiment(rounds: int) -> dict:
    cfg = copy.deepcopy(SMALL)
    cfg["server"]["rounds"] = rounds
    cfg["data"]["source"]["num_samples"] = 2000
    cfg["model"]["trunk"]["hidden"] = [64]
    cfg["runtime"] = {"threads": 1}
    return cfg


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(predicate, quiet: float, fed: LocalFederation, run_id: int, what: str, poll: float = 0.5) -> None:
    """Wait for an event (a file, a line in metrics.jsonl); fail only after ``quiet`` seconds (stretched by the
    machine's load) in which nothing was written under the test's folder: slow is never red, hung is."""
    ended: list[str] = []

    def run_ended() -> str:
        ended.append(fed.run_ended(run_id))
        return ended[-1]

    if not wait_until(predicate, quiet, fed.workdir.parent, poll=poll, ended=run_ended):
        why = f"the run ended ({ended[-1][:2000]})" if ended and ended[-1] else f"nothing written for {quiet:.0f} s x load"
        pytest.fail(f"no {what}: {why}\n--- run log ---\n{fed.run_log(run_id)[-6000:]}")


def _assert_tls(fed: LocalFederation) -> None:
    """The SuperLink's port speaks TLS with the generated certificate (and the nodes were not insecure)."""
    assert fed.certs is not None
    ctx = ssl.create_default_context(cafile=str(fed.certs.ca))
    with socket.create_connection((fed.server_host, fed.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=fed.server_host) as tls:
            assert tls.version() is not None
    assert "--insecure" not in fed.log("supernode-0")


def test_tls_federation_of_three_supernodes_matches_the_simulation(tmp_path):
    cfg = _experiment(rounds=3)
    app = copy_app(APP, tmp_path / "app", yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "flower"
    with LocalFederation(tmp_path / "fed", num_nodes=3, tls=True, time_limit=1800, idle_poll=0.2) as fed:
        run_id = fed.submit(
            app,
            {"output-dir": str(tmp_path / "runs"), "min-nodes": 3, "min-replies": 3, "round-timeout": 90.0},
        )
        _wait(lambda: (run_dir / "summary.json").exists(), 130, fed, run_id, "the run to finish")
        _assert_tls(fed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["clients"] == {"0": ["digit", "parity"], "1": ["digit"], "2": ["parity"]}
    cfg["output"] = {"dir": str(tmp_path / "sim"), "name": "sim", "plots": False}
    sim = Experiment(cfg).run(progress=False).summary["final_global"]
    for task in ("digit", "parity"):
        assert summary["final_global"][task]["accuracy"] == pytest.approx(sim[task]["accuracy"], abs=0.02)
    history = _read(run_dir / "metrics.jsonl")
    assert all(h["replies"] == 3 and h["wire_bytes_up"] >= h["bytes_up"] > 0 for h in history)


def test_a_supernode_killed_mid_round_does_not_stop_the_run(tmp_path):
    # warm ClientApps make a round of this small model take a fraction of a second on a quiet machine: with 3
    # rounds the whole run could end before the kill landed (nothing left to miss). 6 rounds and a fine poll
    # leave rounds after the kill on a fast machine; a slow one only takes longer
    cfg = _experiment(rounds=6)
    app = copy_app(APP, tmp_path / "app", yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "flower"
    metrics = run_dir / "metrics.jsonl"
    with LocalFederation(tmp_path / "fed", num_nodes=3, tls=False, time_limit=1800, idle_poll=0.2) as fed:
        run_id = fed.submit(
            app,
            {"output-dir": str(tmp_path / "runs"), "min-nodes": 3, "min-replies": 2, "round-timeout": 40.0},
        )
        _wait(lambda: len(_read(metrics)) >= 1, 80, fed, run_id, "round 1", poll=0.02)
        fed.kill_node(2)  # round 2 has just been sent out: client 2 dies with its message in flight
        killed_at = len(_read(metrics)) + 1  # the first round that can miss it (a later one on a busy machine)
        _wait(
            lambda: (run_dir / "summary.json").exists(), 110, fed, run_id, "the run to finish without node 2"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert killed_at <= 6, "node 2 died after the last round was sent: nothing could miss it"
    assert summary["rounds_completed"] == 6
    history = _read(metrics)
    # the round that went out while node 2 died records it as dropped, with the two other replies; which round
    # that is depends on how far round 2 got before the kill landed (a loaded machine may finish it first)
    missing = [h for h in history if "2" in h["dropped"]]
    assert missing, history
    assert missing[0]["round"] >= killed_at - 1 and missing[0]["replies"] == 2
    assert all(h["replies"] == 3 for h in history if h["round"] < missing[0]["round"])
    assert all(h["replies"] >= 2 for h in history)


def test_a_resubmitted_run_resumes_from_the_server_checkpoint(tmp_path):
    cfg = _experiment(rounds=2)
    app = copy_app(APP, tmp_path / "app", yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "flower"
    settings = {"output-dir": str(tmp_path / "runs"), "min-nodes": 3, "min-replies": 3, "round-timeout": 90.0}

    def rounds_done() -> int:
        path = run_dir / "summary.json"
        return json.loads(path.read_text())["rounds_completed"] if path.exists() else 0

    # Flower's stock path: a fresh flwr-clientapp process per message, the SuperNode's own 3 s idle wait
    with LocalFederation(tmp_path / "fed", num_nodes=3, tls=False, time_limit=1800, warm=False) as fed:
        first = fed.submit(app, settings)
        _wait(lambda: rounds_done() == 2, 80, fed, first, "the first run")
        # a new ServerApp process (a restarted server) with a longer schedule picks up the checkpoint
        second = fed.submit(app, {**settings, "overrides": "server.rounds=3"})
        _wait(lambda: rounds_done() == 3, 60, fed, second, "the resumed run")
        log = fed.run_log(second)
    assert "resuming" in log and "from round 2" in log
    assert [h["round"] for h in _read(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_a_restarted_supernode_carries_on_with_its_saved_state(tmp_path):
    """Over TLS, node 1 (Ditto's personal model, top-k with an error-feedback residual) is killed after round 1 and
    started again: it comes back under a new Flower node id, restores exactly the state it had saved (same SHA-256) and
    takes part in every later round; rounds wait for it (min-replies 3) instead of going on without it."""
    cfg = _experiment(rounds=4)
    cfg["algorithm"] = {"name": "ditto", "lam": 0.1}
    cfg["comm"] = {"uplink": [{"name": "topk", "fraction": 0.1}]}
    app = copy_app(APP, tmp_path / "app", yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "flower"
    metrics = run_dir / "metrics.jsonl"
    state_dir = Path(os.environ["FEDMTL_FLOWER_STATE"])  # the nodes inherit it (tests/integrations/conftest.py)
    with LocalFederation(tmp_path / "fed", num_nodes=3, tls=True, time_limit=1800, idle_poll=0.2) as fed:
        run_id = fed.submit(
            app,
            {"output-dir": str(tmp_path / "runs"), "min-nodes": 3, "min-replies": 3, "round-timeout": 40.0, "max-retries": 60},
        )
        _wait(lambda: len(_read(metrics)) >= 1, 80, fed, run_id, "round 1")
        fed.kill_node(1)
        (saved,) = state_dir.glob("*/client-1.safetensors")
        tensors, meta = read_checked(saved)
        fed.start_supernode(1)
        _wait(lambda: (run_dir / "summary.json").exists(), 110, fed, run_id, "the run to finish with node 1 back")
        log = fed.log("worker-1")
    assert any(k.startswith("algorithm/personal/") for k in tensors) and any(k.startswith("codec/uplink/") for k in tensors), sorted(tensors)
    assert f"client 1: restored its state after {meta['rounds']} round(s)" in log and meta["sha256"] in log
    history = _read(metrics)
    assert [h["round"] for h in history] == [1, 2, 3, 4] and all(h["replies"] == 3 for h in history)
    _, final = read_checked(saved)
    assert final["rounds"] == "4"


def test_scaffold_with_personalised_evaluation_across_hosts_with_tls_matches_the_simulation(tmp_path):
    """docs/deployment.md's multi-machine procedure on loopback addresses standing for machines: the SuperLink
    on 127.0.0.2 only (its certificate names that address), three client machines 127.0.0.3-5 each with its
    SuperNode and warm ClientApp. SCAFFOLD (its control variates travel in the messages) with personalised
    evaluation on the nodes ends where the simulation ends."""
    cfg = _experiment(rounds=3)
    cfg["algorithm"] = {"name": "scaffold"}
    cfg["client"]["optimizer"]["momentum"] = 0.0  # SCAFFOLD's control variates correct plain SGD steps
    cfg["evaluation"]["personalized"] = True
    app = copy_app(APP, tmp_path / "app", yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "flower"
    hosts = ("127.0.0.3", "127.0.0.4", "127.0.0.5")
    fed_args = {"server_host": "127.0.0.2", "node_hosts": hosts, "idle_poll": 0.2}
    with LocalFederation(tmp_path / "fed", num_nodes=3, tls=True, time_limit=1800, **fed_args) as fed:
        run_id = fed.submit(
            app,
            {"output-dir": str(tmp_path / "runs"), "min-nodes": 3, "min-replies": 3, "round-timeout": 90.0},
        )
        _wait(lambda: (run_dir / "summary.json").exists(), 130, fed, run_id, "the run to finish")
        _assert_tls(fed)
        with socket.socket() as s:  # the SuperLink listens on the server's address only
            assert s.connect_ex(("127.0.0.1", fed.port)) != 0
        for i, host in enumerate(hosts):
            assert f"--host {host}" in " ".join(fed.procs[f"supernode-{i}"].args)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    cfg["output"] = {"dir": str(tmp_path / "sim"), "name": "sim", "plots": False}
    sim = Experiment(cfg).run(progress=False).summary
    for task in ("digit", "parity"):
        got, want = summary["final_global"][task]["accuracy"], sim["final_global"][task]["accuracy"]
        assert got == pytest.approx(want, abs=0.02), task
        # personalised: each client's model on its own test split, evaluated on its node (accuracy per task)
        got, want = summary["final_personalized"][task]["pooled"], sim["final_personalized"][task]["pooled"]
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=0.02), task
    history = _read(run_dir / "metrics.jsonl")
    assert all(h["algorithm_bytes_down"] > 0 and h["algorithm_bytes_up"] > 0 for h in history)  # c and delta c
    assert all(h["personalized_evaluation"]["missing"] == {} for h in history)
