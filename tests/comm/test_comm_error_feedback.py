"""Error feedback conserves the signal: transmitted + residual = true cumulative update."""

from __future__ import annotations

import pytest
import torch

from fedmtl.comm import build_link
from fedmtl.config.comm import CommConfig
from fedmtl.tree import flatten, unflatten

EF_CHAINS = {
    "topk": [{"name": "topk", "fraction": 0.05}],
    "randk": [{"name": "randk", "fraction": 0.1}],
    "sign": [{"name": "sign"}],
    "topk_int8_zstd": [{"name": "topk", "fraction": 0.05}, {"name": "int8"}, {"name": "zstd"}],
    "randk_qsgd": [{"name": "randk", "fraction": 0.2}, {"name": "qsgd", "levels": 4}],
    "dgc_no_momentum_blockq": [
        {"name": "dgc", "fraction": 0.05, "momentum": 0.0},
        {"name": "blockq", "bits": 4},
    ],
    "powersgd": [{"name": "powersgd", "rank": 1}],
    # a sketch too small for a dense update's tail is no contraction: its residual then grows (see docs)
    "sketch": [{"name": "sketch", "fraction": 0.5, "rows": 5, "topk": 0.02}],
}


@pytest.mark.parametrize("name", sorted(EF_CHAINS))
def test_transmitted_plus_residual_equals_cumulative_update(name):
    link = build_link(CommConfig(uplink=EF_CHAINS[name]).uplink)
    assert link.stateful
    g = torch.Generator().manual_seed(0)
    state: dict = {}
    sent = {"w": torch.zeros(20, 10), "b": torch.zeros(10)}
    true = {k: torch.zeros_like(v) for k, v in sent.items()}
    for r in range(6):
        delta = {k: torch.randn(v.shape, generator=g) for k, v in sent.items()}
        if r == 3:
            delta.pop("b")  # a round in which this tensor is not sent keeps its residual
        data, new_state = link.encode(delta, state, g)
        assert state is not new_state
        state = unflatten(flatten(new_state))  # state survives a checkpoint round trip
        out = link.decode(data)
        for k in delta:
            sent[k] += out[k]
            true[k] += delta[k]
        for k in sent:
            assert torch.allclose(
                sent[k] + state["residual"][k].reshape(sent[k].shape), true[k], atol=1e-5
            ), (r, k)


def test_error_feedback_can_be_switched_off():
    link = build_link(CommConfig(uplink=[{"name": "topk", "fraction": 0.1, "error_feedback": False}]).uplink)
    assert not link.stateful
    _, state = link.encode({"w": torch.randn(50)}, {})
    assert state == {}


def test_input_state_is_not_mutated():
    link = build_link(CommConfig(uplink=[{"name": "sign"}]).uplink)
    _, s1 = link.encode({"w": torch.randn(30)}, {})
    copy = s1["residual"]["w"].clone()
    link.encode({"w": torch.randn(30)}, s1)
    assert torch.equal(s1["residual"]["w"], copy)
