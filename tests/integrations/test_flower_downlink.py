"""Compressed downlinks (``comm.downlink_delta``) over Flower, on the in-process grid running the real ClientApp:
the server's mirror of each client's copy makes it send the simulation's differences, byte for byte; the mirrors
survive a server restart (checkpoint); a node that lost its copy refuses a difference and gets the full model next."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from _flower_fakes import SMALL, FakeClock, FakeGrid, round_records, serve, simulate, three_nodes

from fedmtl.checked_file import read_checked
from fedmtl.comm.delta import copy_digest
from fedmtl.config import config_from_dict
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.node import downlink_copy
from fedmtl.integrations.flower import FlowerSettings, make_client_app
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower.server_app import server_for
from fedmtl.runloop.checkpoint import load_latest, save_checkpoint
from fedmtl.tree import unflatten

pytestmark = pytest.mark.flower

EXAMPLE = Path(__file__).parents[2] / "examples" / "configs" / "compressed.yaml"


def _config(tmp_path: Path, rounds: int = 3):  # type: ignore[no-untyped-def]
    """A small demo-like experiment with compressed.yaml's chains; the differences without their byte codec, so
    that their sizes do not depend on the values' last bits (zstd's would, by a few bytes: see the uplink test)."""
    comm = yaml.safe_load(EXAMPLE.read_text())["comm"]
    data = copy.deepcopy(SMALL)
    data["model"]["trunk"] = {"name": "cnn1d", "channels": [8, 8], "kernel_size": 5, "hidden": 16}
    data["comm"] = {**comm, "downlink_delta": [c for c in comm["downlink_delta"] if c["name"] not in ("zstd", "lz4")]}
    data["server"]["rounds"] = rounds
    data["output"]["dir"] = str(tmp_path)
    return config_from_dict(data)


def _node_copies() -> dict[int, str]:
    """Client id -> the digest of the copy its node keeps in its client-state file."""
    out = {}
    for path in Path(os.environ["FEDMTL_FLOWER_STATE"]).glob("*/client-*.safetensors"):
        tensors, _ = read_checked(path)
        out[int(path.stem.split("-")[1])] = copy_digest(ClientState.from_tree(unflatten(tensors)).codec["downlink_copy"])  # type: ignore[arg-type]
    return out


def test_downlink_differences_move_the_same_bytes_over_flower(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path)
    sim = simulate(cfg)
    grid = three_nodes()
    serve(cfg, tmp_path / "flower", grid)
    history = round_records(tmp_path / "flower")
    assert [h["bytes_down"] for h in history] == [s["bytes_down"] for s in sim.history]
    assert all(not h["dropped"] for h in history)
    # round 1 sends full models; rounds 2 and 3 differences, each naming the copy it is taken against
    sent = {g: [m.content.config_records[msgs.META].get(msgs.BASE, "") for m in grid.sent if m.metadata.group_id == g] for g in "123"}
    assert sent["1"] == ["", "", ""] and all(len(b) == 32 for b in sent["2"] + sent["3"])
    assert history[1]["bytes_down"] != history[0]["bytes_down"]
    state, _ = load_latest(tmp_path / "flower")
    for name, value in sim.params.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-4, rtol=1e-3)
    # the server's mirrors (checkpointed) are, bit for bit, the copies the nodes keep
    mirrors = {c: copy_digest(downlink_copy(s)) for c, s in state.client_states.items() if downlink_copy(s) is not None}  # type: ignore[arg-type]
    assert mirrors == _node_copies() and len(mirrors) == 3


def test_mirrors_survive_a_restart_and_a_node_without_its_copy_gets_the_full_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(tmp_path / "cache"))
    cfg, run_dir = _config(tmp_path, rounds=4), tmp_path / "flower"
    grid = FakeGrid(make_client_app(), {101: 0, 102: 1, 103: 2}, {}, errors_as_replies=True)
    settings = FlowerSettings(min_nodes=3, round_timeout=30.0, poll_interval=0.5)

    def server():  # type: ignore[no-untyped-def]
        s = server_for(cfg, settings, grid, run_dir, clock=(c := FakeClock()), sleep=c.sleep)
        s.wait_for_nodes()
        return s

    first = server()
    state, r1 = first.run_round(first.fed.init_state())
    save_checkpoint(run_dir, state, {})
    # a new server process resumes from the checkpoint: it still sends differences
    second = server()
    state, _ = load_latest(run_dir)
    state, r2 = second.run_round(state)
    assert not r2["dropped"] and r2["bytes_down"] != r1["bytes_down"]
    assert all(msgs.BASE in m.content.config_records[msgs.META] for m in grid.sent if m.metadata.group_id == "2")
    # client 1's node loses its state: it refuses the difference, the server forgets its mirror ...
    for path in Path(os.environ["FEDMTL_FLOWER_STATE"]).glob("*/client-1.safetensors"):
        path.unlink()
    state, r3 = second.run_round(state)
    assert list(r3["dropped"]) == ["1"] and "holds copy none" in r3["dropped"]["1"]
    assert downlink_copy(state.client_states.get(1, ClientState())) is None and downlink_copy(state.client_states[0]) is not None
    # ... and sends it the full model next: everyone trains, the mirrors match the nodes' copies again
    state, r4 = second.run_round(state)
    assert not r4["dropped"]
    bases = {m.content.config_records[msgs.META]["client-id"]: m.content.config_records[msgs.META].get(msgs.BASE, "") for m in grid.sent if m.metadata.group_id == "4"}
    assert bases[1] == "" and bases[0] and bases[2]
    assert {c: copy_digest(downlink_copy(s)) for c, s in state.client_states.items() if downlink_copy(s) is not None} == _node_copies()  # type: ignore[arg-type]
    # personalised evaluation sends differences too (the nodes add them to their copies without keeping them)
    _, rows, info = second.evaluate_personalized(state)
    assert info["missing"] == {} and len(rows) == 3
    assert all(msgs.BASE in m.content.config_records[msgs.META] for m in grid.sent if m.metadata.group_id == "evaluate-4")
    assert {c: copy_digest(downlink_copy(s)) for c, s in state.client_states.items() if downlink_copy(s) is not None} == _node_copies()  # type: ignore[arg-type]


def test_downlink_mirrors_bounds_the_server_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(tmp_path / "cache"))
    grid = three_nodes()
    settings = FlowerSettings(min_nodes=3, round_timeout=30.0, poll_interval=0.5, downlink_mirrors=2)
    server = server_for(_config(tmp_path), settings, grid, tmp_path / "flower", clock=(c := FakeClock()), sleep=c.sleep)
    server.wait_for_nodes()
    state, _ = server.run_round(server.fed.init_state())
    # all three answered in round 1: the two mirrors kept are those of clients 1 and 2 (ties: lower id goes first)
    assert sorted(cid for cid, s in state.client_states.items() if downlink_copy(s) is not None) == [1, 2]
    state, r2 = server.run_round(state)
    assert not r2["dropped"]
    sent = {m.content.config_records[msgs.META]["client-id"]: m.content.config_records[msgs.META].get(msgs.BASE, "") for m in grid.sent if m.metadata.group_id == "2"}
    assert sent[0] == "" and sent[1] and sent[2]  # client 0 (no mirror) received the full model
    assert sorted(cid for cid, s in state.client_states.items() if downlink_copy(s) is not None) == [1, 2]
    with pytest.raises(ValueError, match="downlink_mirrors"):
        FlowerSettings(downlink_mirrors=-1)
