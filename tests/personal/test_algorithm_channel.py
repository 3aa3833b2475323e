"""The algorithm's server state and the clients' outboxes go through the codecs and are counted."""

from __future__ import annotations

import pytest
import torch

from fedmtl.comm import Link, PayloadError
from fedmtl.config import comm as comm_cfg
from fedmtl.fl.algorithm_channel import (
    decode_outbox,
    decode_state,
    encode_tree,
    nest_names,
    state_view,
    unnest_names,
)
from fedmtl.fl.client import held_parameter_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.node import ClientReply
from fedmtl.tree import flatten

from .conftest import config, federation


def _comm(down: list[dict], up: list[dict] | None = None) -> dict:
    return {"downlink": down, "uplink": up or [{"name": "identity"}]}


@pytest.mark.parametrize("algorithm", [{"name": "scaffold"}, {"name": "ifca", "clusters": 3}, {"name": "fedem", "components": 2}, {"name": "mocha"}], ids=lambda a: a["name"])
def test_algorithm_bytes_are_counted_in_the_round(algorithm) -> None:  # type: ignore[no-untyped-def]
    fed = federation(config(algorithm))
    state = fed.init_state()
    plan = fed.plan(state)
    assert set(plan.state_payloads) == set(plan.cohort)
    state, report = fed.round(state)
    model_down = sum(len(p) for p in plan.payloads.values())
    assert report.algorithm_bytes_down == plan.algorithm_bytes_down > 0
    assert report.bytes_down == model_down + report.algorithm_bytes_down
    if algorithm["name"] in ("scaffold", "fedem"):  # they upload delta c / their components
        assert report.algorithm_bytes_up > 0
    assert report.bytes_up >= report.algorithm_bytes_up


def test_fedavg_has_no_algorithm_channel() -> None:
    fed = federation(config())
    state = fed.init_state()
    plan = fed.plan(state)
    assert plan.state_payloads == {} and plan.algorithm_bytes_down == 0
    _, report = fed.round(state)
    assert report.algorithm_bytes_down == report.algorithm_bytes_up == 0


def test_ifca_clusters_are_compressed_by_the_downlink_chain() -> None:
    wide = {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [256]}}  # the tensors outweigh the framing
    fp32 = federation(config({"name": "ifca", "clusters": 3}, model=wide))
    fp16 = federation(config({"name": "ifca", "clusters": 3}, model=wide, comm=_comm([{"name": "fp16"}])))
    s32, s16 = fp32.init_state(), fp16.init_state()
    b32, b16 = fp32.plan(s32).algorithm_bytes_down, fp16.plan(s16).algorithm_bytes_down
    assert b16 < 0.6 * b32  # half the bytes, plus the framing
    # the client decodes what was sent: fp16-rounded cluster models
    view = fp16.server_views(s16, [4])[4]
    sent = s16.algorithm_state["clusters"]["1"]
    for name, value in view["clusters"]["1"].items():
        torch.testing.assert_close(value, sent[name].half().float())


def test_a_client_receives_only_the_heads_it_holds() -> None:
    fed = federation(config({"name": "scaffold"}))
    state = fed.init_state()
    only_a = fed.data.clients[0]
    assert only_a.tasks == ("a",)
    view = fed.server_views(state, [0])[0]
    held = set(held_parameter_names(fed.model, only_a.tasks))
    assert set(view["c"]) == held and held < set(state.params)
    # the filter keeps every leaf that is not a model parameter (MOCHA's Omega, IFCA's counts)
    extra = {"c": {n: torch.zeros(1) for n in state.params}, "omega": torch.eye(2)}
    assert "omega" in state_view(extra, state.params, held)


def test_trees_with_integers_flags_and_empty_subtrees_survive_a_lossy_chain() -> None:
    link = Link([comm_cfg.Int8Codec(), comm_cfg.ZstdCodec()])
    tree = {"clients": torch.tensor(6), "tasks": {}, "seen": torch.tensor([True, False]), "w": {"x": torch.randn(4, 3)}}
    payload, _ = encode_tree(link, flatten(tree), {}, torch.Generator().manual_seed(0))
    back = decode_state(link, payload)
    assert back["clients"] == 6 and back["tasks"] == {} and back["seen"].tolist() == [True, False]
    torch.testing.assert_close(back["w"]["x"], tree["w"]["x"], atol=0.05, rtol=0)
    assert decode_state(link, b"") == {} and encode_tree(link, {}, {}, torch.Generator())[0] == b""


def test_a_malformed_outbox_drops_the_client_with_its_reason() -> None:
    fed = federation(config({"name": "scaffold"}))
    state = fed.init_state()
    plan = fed.plan(state)
    good = [fed.node.run(plan.payloads[c], fed.data.clients[c], ClientState(), 0, plan.state_payloads[c])[0] for c in plan.cohort]
    shapes = {n: p.shape for n, p in fed.model.named_parameters()}
    name = next(iter(shapes))
    wrong_shape, _ = fed.up.encode({f"delta_c/{name}": torch.zeros(2, 2, 2)}, {}, None)
    unknown, _ = fed.up.encode({"delta_c/not.a.param": torch.zeros(3)}, {}, None)
    bad = [
        ClientReply(r.client_id, r.payload, r.num_samples, r.task_samples, r.metrics, outbox)
        for r, outbox in zip(good[:3], [wrong_shape, unknown, b"garbage"])
    ]
    updates, dropped = fed.collect(bad + good[3:])
    assert len(updates) == len(good) - 3
    assert "has shape [2, 2, 2]" in dropped[bad[0].client_id]
    assert "not named after a model parameter" in dropped[bad[1].client_id]
    assert bad[2].client_id in dropped
    with pytest.raises(PayloadError, match="not named after"):
        decode_outbox(fed.up, unknown, shapes)


def test_outbox_error_feedback_residual_is_kept_between_rounds() -> None:
    up = [{"name": "topk", "fraction": 0.1, "error_feedback": True}]
    fed = federation(config({"name": "scaffold"}, comm=_comm([{"name": "identity"}], up)))
    state = fed.init_state()
    state, report = fed.round(state)
    assert not report.dropped
    codec = state.client_states[0].codec
    assert "outbox" in codec and "uplink" in codec
    residual = flatten(codec["outbox"]["residual"])  # nested by the outbox's paths: a checkpoint stores it
    assert any(float(r.abs().sum()) > 0 for r in residual.values())  # what top-k did not send this round
    assert all(k.startswith("delta_c/") for k in residual)


def test_an_outbox_link_state_is_nested_for_checkpoints_and_read_back_exactly() -> None:
    """The outbox's names hold "/" (``delta_c/<param>``), which tensor-tree keys may not: the client keeps the
    link's state nested by path (SCAFFOLD or FedEM with an error-feedback uplink used to fail at its first checkpoint)."""
    state = {
        "residual": {"delta_c/w": torch.ones(2), "components/1/h.b": torch.zeros(1)},
        "memory": {"delta_c/w": {"q": torch.arange(3.0)}},
    }
    nested = nest_names(state)
    assert set(flatten(nested)) == {"residual/delta_c/w", "residual/components/1/h.b", "memory/delta_c/w/q"}
    back = unnest_names(nested, ["delta_c/w", "components/1/h.b"])
    assert back.keys() == state.keys() and back["residual"].keys() == state["residual"].keys()
    assert all(torch.equal(back["residual"][n], v) for n, v in state["residual"].items())
    assert torch.equal(back["memory"]["delta_c/w"]["q"], torch.arange(3.0)) and list(back["memory"]) == ["delta_c/w"]
