"""Compressed downlinks: differences to each client's last copy, the full model for clients without one."""

from __future__ import annotations

import pytest
import torch

from fedmtl.comm import PayloadError, build_link
from fedmtl.comm.delta import apply_delta, build_delta_link, encode_delta, is_delta
from fedmtl.config import config_from_dict
from fedmtl.config.comm import CommConfig
from fedmtl.data import build_federated_data
from fedmtl.engine import make_federation
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.node import downlink_copy
from fedmtl.mtl import build_model


def _delta_link(*specs: dict):
    link = build_delta_link(CommConfig(downlink_delta=list(specs)))
    assert link is not None
    return link


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "topk", "fraction": 0.25},
        # dgc with momentum 0 and warmup 0 is stateless top-k whose indices travel gap-coded: the same copies
        {"name": "dgc", "fraction": 0.25, "momentum": 0.0, "warmup": 0},
    ],
    ids=["topk", "dgc-gap-coded"],
)
def test_the_copy_is_the_error_feedback(spec):
    # top-k 25 % of 4 entries sends one coordinate a round; the copy reaches the model in 4 rounds, exactly
    link = _delta_link(spec)
    params = {"w": torch.tensor([4.0, -3.0, 2.0, 1.0])}
    copy = {"w": torch.zeros(4)}
    seen = []
    for _ in range(4):
        copy = apply_delta(link, encode_delta(link, params, copy, None), copy, {"w": torch.Size([4])})
        seen.append(copy["w"].tolist())
    assert seen == [[4, 0, 0, 0], [4, -3, 0, 0], [4, -3, 2, 0], [4, -3, 2, 1]]


def test_payloads_of_the_two_downlinks_never_pass_for_each_other():
    full = build_link(CommConfig().downlink)
    delta = _delta_link({"name": "identity"})  # the same chain, but a delta payload is labelled
    x = {"w": torch.ones(3)}
    d = encode_delta(delta, x, {"w": torch.zeros(3)}, None)
    f, _ = full.encode(x, {})
    assert is_delta(delta, d) and not is_delta(delta, f) and not is_delta(delta, b"junk")
    with pytest.raises(PayloadError, match="codec chain"):
        full.decode(d)
    with pytest.raises(PayloadError, match="tensors, the client's copy"):
        apply_delta(
            delta, d, {"w": torch.zeros(3), "v": torch.zeros(1)}, {"w": torch.Size([3]), "v": torch.Size([1])}
        )


def test_delta_chain_config():
    assert build_delta_link(CommConfig()) is None  # default: full broadcasts only
    cfg = CommConfig(
        downlink_delta=[{"name": "topk", "fraction": 0.1}, {"name": "blockq", "bits": 4}, {"name": "zstd"}]
    )
    assert [c.name for c in cfg.downlink_delta] == ["topk", "blockq", "zstd"]
    with pytest.raises(ValueError, match="cannot use 'dgc'"):
        CommConfig(downlink_delta=[{"name": "dgc"}])
    with pytest.raises(ValueError, match="cannot use 'dgc'"):
        CommConfig(downlink_delta=[{"name": "dgc", "momentum": 0.0}])  # the warm-up is sender state too
    with pytest.raises(ValueError, match="order is sparsifier"):
        CommConfig(downlink_delta=[{"name": "blockq"}, {"name": "topk"}])


def _federation(engine: str, delta: list[dict]):
    cfg = config_from_dict(
        {
            "data": {"source": {"name": "digits"}, "num_clients": 4, "partition": {"name": "iid"}},
            "comm": {"downlink": [{"name": "fp16"}], "downlink_delta": delta},
            "engine": {"name": engine},
        }
    )
    data = build_federated_data(cfg.data, 0)
    return make_federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks))


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_clients_with_a_copy_receive_differences_counted_exactly(engine):
    fed = _federation(
        engine, [{"name": "topk", "fraction": 0.05}, {"name": "blockq", "bits": 4}, {"name": "zstd"}]
    )
    s0 = fed.init_state()
    plan0 = fed.plan(s0)
    assert not plan0.copies  # nobody holds a copy yet: the full model (fp16) for everyone
    s1, r1 = fed.round(s0)
    assert r1.bytes_down == plan0.bytes_down == sum(len(p) for p in plan0.payloads.values())
    for cid in plan0.cohort:  # each client kept what it decoded
        got = fed.node.receive(plan0.payloads[cid], fed.data.clients[cid])
        assert all(torch.equal(got[n], downlink_copy(s1.client_states[cid])[n]) for n in got)
    plan1 = fed.plan(s1)
    assert set(plan1.copies) == set(plan1.cohort)
    assert plan1.bytes_down < plan0.bytes_down / 4
    for cid, start in zip(plan1.cohort, fed.receive_all(plan1, plan1.cohort)):
        copy = downlink_copy(s1.client_states[cid])
        diff = fed.down_delta.decode(plan1.payloads[cid])
        assert all(torch.equal(start[n], copy[n] + diff[n]) for n in copy)
    s2, r2 = fed.round(s1)
    assert r2.bytes_down == plan1.bytes_down
    assert all(torch.isfinite(p).all() for p in s2.params.values())


def test_a_client_that_lost_its_copy_gets_the_full_model():
    fed = _federation("sequential", [{"name": "topk", "fraction": 0.05}])
    s1, _ = fed.round(fed.init_state())
    forgetful = type(s1)(s1.round, s1.params, s1.opt_state, {c: ClientState() for c in s1.client_states})
    plan = fed.plan(forgetful)
    assert not plan.copies
    full = fed.plan(type(s1)(s1.round, s1.params, s1.opt_state, {}))
    assert plan.payloads == full.payloads
    # a deployed client holding a copy still decodes a full broadcast (the server may not mirror it)
    cid = plan.cohort[0]
    got = fed.node.receive(plan.payloads[cid], fed.data.clients[cid], downlink_copy(s1.client_states[cid]))
    assert got.keys() == downlink_copy(s1.client_states[cid]).keys()


def test_identity_differences_reproduce_the_full_broadcast():
    plain, delta = _federation("sequential", []), _federation("sequential", [{"name": "identity"}])
    sp, sd = plain.init_state(), delta.init_state()
    for _ in range(3):
        sp, _ = plain.round(sp)
        sd, _ = delta.round(sd)
    for n in sp.params:
        # fp16 full broadcast in round 1, then exact float32 differences: the copy is at least as exact
        assert torch.allclose(sp.params[n], sd.params[n], atol=2e-3), n


def test_compressed_run_resumes_exactly_with_the_copies(tiny_config):
    import fedmtl

    comm = {
        "uplink": [{"name": "qsgd", "levels": 1, "bucket_size": 256}, {"name": "zstd", "dictionary": 1}],
        "downlink": [{"name": "blockq", "bits": 8}],
        "downlink_delta": [{"name": "sign"}, {"name": "zstd", "dictionary": 1}],
    }
    cfg = {**tiny_config, "comm": comm, "server": {**tiny_config["server"], "rounds": 4}}
    full = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "full"}}).run(progress=False)
    part = {**cfg, "server": {**cfg["server"], "rounds": 2}, "output": {**cfg["output"], "name": "part"}}
    first = fedmtl.Experiment(part).run(progress=False)
    resumed = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "part"}}).run(
        resume=first.run_dir, progress=False
    )
    assert [r["bytes_down"] for r in resumed.history] == [r["bytes_down"] for r in full.history]
    assert [r["bytes_up"] for r in resumed.history] == [r["bytes_up"] for r in full.history]
    assert resumed.summary["final_global"] == full.summary["final_global"]
