"""The codec chains of examples/configs/compressed.yaml over Flower (the in-process grid running the real
ClientApp): the same bytes and the same model as the simulation. This test sends full models
(``comm.downlink``); compressed downlinks (``comm.downlink_delta``) over Flower are test_flower_downlink.py's."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from _flower_fakes import SMALL, serve, simulate

from fedmtl.checked_file import read_checked
from fedmtl.config import config_from_dict
from fedmtl.runloop.checkpoint import load_latest

pytestmark = pytest.mark.flower

EXAMPLE = Path(__file__).parents[2] / "examples" / "configs" / "compressed.yaml"


def test_the_recommended_uplink_chain_moves_the_same_bytes_over_flower(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(tmp_path / "cache"))
    comm = yaml.safe_load(EXAMPLE.read_text())["comm"]
    data = copy.deepcopy(SMALL)
    data["model"]["trunk"] = {"name": "cnn1d", "channels": [8, 8], "kernel_size": 5, "hidden": 16}  # the demo's kind
    data["comm"] = {"uplink": comm["uplink"], "downlink": comm["downlink"]}
    data["output"]["dir"] = str(tmp_path)
    cfg = config_from_dict(data)
    sim = simulate(cfg)
    serve(cfg, tmp_path / "flower")
    state, _ = load_latest(tmp_path / "flower")
    assert state.round == 3
    # the nodes' arithmetic differs from the simulation's in the last float bits (as in the uncompressed test's
    # 1e-6), and an int8 factor entry on a rounding boundary then moves by one step: a few 1e-5 in the model
    for name, value in sim.params.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-4, rtol=1e-3)
    history = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    for h, s in zip(history, sim.history, strict=True):
        assert h["bytes_down"] == s["bytes_down"]
        # the same chain and sizes; zstd's output length depends on the values' last bits (above): a few bytes
        # in a thousand
        assert abs(h["bytes_up"] - s["bytes_up"]) <= 0.01 * s["bytes_up"]
    # the chain's state (error-feedback residual, warm start) lives in each node's client-state file between rounds
    files = sorted(Path(os.environ["FEDMTL_FLOWER_STATE"]).glob("*/client-*.safetensors"))
    assert [p.name for p in files] == ["client-0.safetensors", "client-1.safetensors", "client-2.safetensors"]
    for path in files:
        tensors, _ = read_checked(path)
        assert any("codec" in name for name in tensors), sorted(tensors)
