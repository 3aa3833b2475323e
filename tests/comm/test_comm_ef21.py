"""EF21 on the uplink (Richtárik et al., 2021): the client sends C(Δ - g), client and server both add it to g."""

from __future__ import annotations

import pytest
import torch

from fedmtl.comm import Link, ef21
from fedmtl.config import config_from_dict
from fedmtl.config.comm import CommConfig
from fedmtl.data import build_federated_data
from fedmtl.engine import make_federation
from fedmtl.fl.client_state import UPLINK_ESTIMATE
from fedmtl.fl.node import uplink_estimate
from fedmtl.mtl import build_model

TOP1_OF_4 = [{"name": "topk", "fraction": 0.25, "error_feedback": False}]


def _link(chain: list[dict]) -> Link:
    return Link(CommConfig(uplink=chain, uplink_ef21=True).uplink)


def test_estimate_reaches_a_constant_update_one_coordinate_a_round():
    # top-1 of 4 entries: g moves by the largest entry of Δ - g each round, so it reaches Δ in 4 rounds, then
    # stays (Algorithm 1 of the paper with a constant gradient)
    link = _link(TOP1_OF_4)
    update = {"w": torch.tensor([4.0, -3.0, 2.0, 1.0])}
    g, seen = None, []
    for _ in range(5):
        _, _, g = ef21.encode(link, update, g, {}, None)
        seen.append(g["w"].tolist())
    assert seen == [[4, 0, 0, 0], [4, -3, 0, 0], [4, -3, 2, 0], [4, -3, 2, 1], [4, -3, 2, 1]]


def test_estimate_follows_a_changing_update_where_error_feedback_would_not():
    # Δ1 = [4, -3, 2, 1] then Δ2 = [5, -3, 2, 1]: EF21 sends top-1 of Δ2 - g = [1, -3, 2, 1], i.e. -3 at index 1,
    # and the server's update is g = [4, -3, 0, 0]; error feedback would send top-1 of Δ2 + e = [5, -6, 4, 2]
    # and the server's update would be [0, -6, 0, 0]
    link = _link(TOP1_OF_4)
    _, _, g = ef21.encode(link, {"w": torch.tensor([4.0, -3.0, 2.0, 1.0])}, None, {}, None)
    payload, _, g = ef21.encode(link, {"w": torch.tensor([5.0, -3.0, 2.0, 1.0])}, g, {}, None)
    assert link.decode(payload)["w"].tolist() == [0, -3, 0, 0]
    assert g["w"].tolist() == [4, -3, 0, 0]


def test_the_server_adds_what_it_decodes_to_its_mirror_bit_for_bit():
    link = _link([{"name": "topk", "fraction": 0.1, "error_feedback": False}, {"name": "blockq", "bits": 4}])
    gen = torch.Generator().manual_seed(0)
    g_client: dict | None = None
    g_server: dict | None = None
    for _ in range(3):
        update = {"a": torch.randn(50, generator=gen), "b": torch.randn(3, 4, generator=gen)}
        payload, _, g_client = ef21.encode(link, update, g_client, {}, gen)
        g_server = ef21.advance(g_server, link.decode(payload))
    assert g_client is not None and g_server is not None
    assert all(torch.equal(g_client[n], g_server[n]) for n in g_client)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="estimate for 'w' has shape \\[3\\], the update \\[4\\]"):
        ef21.difference({"w": torch.zeros(4)}, {"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="estimate for 'w' has shape \\[3\\], the payload \\[4\\]"):
        ef21.advance({"w": torch.zeros(3)}, {"w": torch.zeros(4)})


def test_config_refuses_ef21_with_error_feedback_secure_aggregation_and_fedbuff():
    assert CommConfig().uplink_ef21 is False
    with pytest.raises(ValueError, match="set error_feedback: false"):
        CommConfig(uplink=[{"name": "topk"}], uplink_ef21=True)
    with pytest.raises(ValueError, match="secure_aggregation"):
        config_from_dict(
            {
                "comm": {"uplink": TOP1_OF_4, "uplink_ef21": True},
                "privacy": {"secure_aggregation": {}},
            }
        )
    with pytest.raises(ValueError, match="fedbuff"):
        config_from_dict(
            {
                "comm": {"uplink": TOP1_OF_4, "uplink_ef21": True},
                "systems": {"mode": {"name": "fedbuff", "buffer_size": 2, "concurrency": 3}},
            }
        )


def _federation(engine: str, chain: list[dict], use_ef21: bool = True):
    cfg = config_from_dict(
        {
            "data": {"source": {"name": "digits"}, "num_clients": 4, "partition": {"name": "iid"}},
            "comm": {"uplink": chain, "uplink_ef21": use_ef21},
            "engine": {"name": engine},
        }
    )
    data = build_federated_data(cfg.data, 0)
    return make_federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks))


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_the_server_aggregates_the_clients_estimates(engine):
    fed = _federation(engine, [{"name": "topk", "fraction": 0.05, "error_feedback": False}, {"name": "blockq", "bits": 4}])
    state = fed.init_state()
    for _ in range(2):  # the second round starts from the estimates of the first
        plan = fed.plan(state)
        replies, states = fed.local_round(state, plan)
        updates, dropped = fed.collect(replies, state)
        assert not dropped and len(updates) == len(plan.cohort)
        for u in updates:  # the server's update of a client is that client's new estimate, exactly
            g = uplink_estimate(states[u.client_id])
            assert g is not None and set(g) == set(u.delta)
            assert all(torch.equal(g[n], u.delta[n]) for n in g)
        nxt, report = fed.round(state)
        assert report.bytes_up == sum(len(r.payload) + len(r.outbox) for r in replies)  # the payloads of C(Δ - g)
        assert all(torch.equal(nxt.params[n], fed.round(state)[0].params[n]) for n in nxt.params)  # deterministic
        state = nxt
    with pytest.raises(RuntimeError, match="needs the round's state"):
        fed.collect(replies)


def test_ef21_with_an_exact_chain_sends_the_plain_updates():
    # identity: C(Δ - g) = Δ - g, so the estimate is Δ (to float rounding) and the run is the plain one
    plain = _federation("sequential", [{"name": "identity"}], use_ef21=False)
    ef = _federation("sequential", [{"name": "identity"}])
    sp, se = plain.init_state(), ef.init_state()
    for _ in range(2):
        sp, rp = plain.round(sp)
        se, re = ef.round(se)
        assert rp.bytes_up == re.bytes_up
    assert all(torch.allclose(sp.params[n], se.params[n], atol=1e-5) for n in sp.params)
    assert any(UPLINK_ESTIMATE in s.codec for s in se.client_states.values())


def test_ef21_run_resumes_exactly_with_the_estimates(tiny_config):
    import fedmtl

    comm = {
        "uplink": [{"name": "dgc", "fraction": 0.05, "momentum": 0.0, "warmup": 0, "error_feedback": False}, {"name": "blockq", "bits": 4}, {"name": "zstd"}],
        "uplink_ef21": True,
    }
    cfg = {**tiny_config, "comm": comm, "server": {**tiny_config["server"], "rounds": 4}}
    full = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "full"}}).run(progress=False)
    part = {**cfg, "server": {**cfg["server"], "rounds": 2}, "output": {**cfg["output"], "name": "part"}}
    first = fedmtl.Experiment(part).run(progress=False)
    resumed = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "part"}}).run(resume=first.run_dir, progress=False)
    assert [r["bytes_up"] for r in resumed.history] == [r["bytes_up"] for r in full.history]
    assert resumed.summary["final_global"] == full.summary["final_global"]
