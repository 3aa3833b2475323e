"""FedBN with a BatchNorm MLP trunk: affine parameters and running statistics stay on each client."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmtl.config import ConfigError, config_from_dict
from fedmtl.data import from_arrays
from fedmtl.fl.client import default_buffers, norm_buffer_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization.fedbn import norm_parameter_names
from fedmtl.runloop.evaluation import evaluate_personalized

from .conftest import config, federation

BN_MODEL = {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16], "norm": "batch"}}


def scaled_source(n: int = 600):  # type: ignore[no-untyped-def]
    """Rows i*6+k (partition 'shards'-free iid split below) with clients' features scaled very differently."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    a = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    b = (x[:, 2] + x[:, 3] > 0).astype(int)
    return x, a, b


def test_batch_norm_trunk_builds_and_only_fedbn_or_local_accept_it() -> None:
    fed = federation(config({"name": "fedbn"}, model=BN_MODEL))
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in fed.model.modules())
    assert norm_parameter_names(fed.model) == {"trunk.net.1.weight", "trunk.net.1.bias"}
    assert set(norm_buffer_names(fed.model)) == {"trunk.net.1.running_mean", "trunk.net.1.running_var", "trunk.net.1.num_batches_tracked"}
    config_from_dict(config({"name": "local"}, model=BN_MODEL))
    for name in ("fedavg", "ditto", "fedem"):
        with pytest.raises(ConfigError, match="fedbn"):
            config_from_dict(config({"name": name}, model=BN_MODEL))
    # the default trunk has no normalisation
    assert not norm_buffer_names(federation(config()).model)


def test_vectorised_engine_batches_batch_norm_trunks_with_their_own_statistics() -> None:
    from fedmtl.engine import VectorizedEngine
    from fedmtl.engine.stacked import has_norm_statistics

    fed = federation(config({"name": "fedbn"}, model=BN_MODEL))
    assert has_norm_statistics(fed.model) and not has_norm_statistics(federation(config()).model)
    engine = VectorizedEngine()
    fed.engine = engine
    state, _ = fed.round(fed.init_state())
    assert engine.last_run["sequential"] == 0  # batched (clients of equal batch sizes together)
    stats = [st.buffers for st in state.client_states.values()]
    assert len(stats) > 1 and all(set(b) == set(norm_buffer_names(fed.model)) for b in stats)
    first = next(iter(stats[0]))
    assert not torch.equal(stats[0][first], stats[1][first])  # each client's own running statistics


def test_fedbn_keeps_norm_parameters_and_statistics_local() -> None:
    fed = federation(config({"name": "fedbn"}, model=BN_MODEL))
    state = fed.init_state()
    bn_params = norm_parameter_names(fed.model)
    bn_buffers = set(norm_buffer_names(fed.model))
    plan = fed.plan(state)
    for cid in plan.cohort:  # nothing of the norm layers is broadcast ...
        received = fed.node.receive(plan.payloads[cid], fed.data.clients[cid])
        assert not set(received) & (bn_params | bn_buffers)
    for _ in range(2):
        state, report = fed.round(state)
        assert not report.dropped
    # ... or uploaded: the server's values are the initial ones
    init = fed.init_state().params
    for n in bn_params:
        assert torch.equal(state.params[n], init[n])
    cs = state.client_states
    assert all(set(cs[c].buffers) == bn_buffers and set(cs[c].algorithm["personal"]) == bn_params for c in range(6))
    for n in ("trunk.net.1.running_mean", "trunk.net.1.running_var"):
        assert not torch.allclose(cs[0].buffers[n], cs[1].buffers[n])
    assert not torch.allclose(cs[0].algorithm["personal"]["trunk.net.1.weight"], cs[1].algorithm["personal"]["trunk.net.1.weight"])
    # two rounds of one epoch: each client's statistics saw only its own batches, none were reset or shared
    for c in range(6):
        steps = 2 * -(-fed.data.clients[c].num_train // 32)
        assert int(cs[c].buffers["trunk.net.1.num_batches_tracked"]) == steps


def test_clients_with_differently_scaled_features_get_their_own_statistics() -> None:
    x, a, b = scaled_source()
    x = x.copy()
    # explicit clients 0..5 come from an iid split; scale every row by a client-specific factor afterwards
    cfg = config({"name": "fedbn"}, model=BN_MODEL)
    cfg["data"]["preprocessing"] = {"normalize": "none"}
    fed = federation(cfg, from_arrays(x, {"a": a, "b": b}, {"a": "multiclass", "b": "binary"}, num_classes={"a": 3}))
    scale = {0: 1.0, 1: 100.0}
    for cid, s in scale.items():
        c = fed.data.clients[cid]
        c.train.x.mul_(s)
        c.test.x.mul_(s)
    state = fed.init_state()
    for _ in range(3):
        state, _ = fed.round(state)
    var0 = state.client_states[0].buffers["trunk.net.1.running_var"]
    var1 = state.client_states[1].buffers["trunk.net.1.running_var"]
    # the 100x client's pre-activations are ~100x larger: ~10^4 in variance (allow for its drifting weights)
    assert float((var1 / var0).median()) > 100
    # and it is evaluated with its own statistics: with the other client's it does much worse
    summary, rows = evaluate_personalized(fed.model, fed.algorithm, state.params, fed.data, state.client_states, 256)
    def accuracy(rows):  # each client's accuracy over its tasks (a and b: both classification)
        return {r["client"]: sum(m["accuracy"] for m in r["tasks"].values()) / len(r["tasks"]) for r in rows}

    own = accuracy(rows)
    swapped = dict(state.client_states)
    swapped[1] = replace(swapped[1], buffers=state.client_states[0].buffers)
    _, rows_sw = evaluate_personalized(fed.model, fed.algorithm, state.params, fed.data, swapped, 256)
    assert accuracy(rows_sw)[1] < own[1] - 0.1


def test_client_without_state_is_evaluated_with_initial_statistics() -> None:
    fed = federation(config({"name": "fedbn"}, model=BN_MODEL, server={"rounds": 1, "clients_per_round": 2}))
    state = fed.init_state()
    state, _ = fed.round(state)
    absent = next(c for c in range(6) if c not in state.client_states)
    # after evaluating a trained client, evaluating an absent one must not inherit its statistics
    evaluate_personalized(fed.model, fed.algorithm, state.params, fed.data, state.client_states, 256)
    seen = {n: b.clone() for n, b in fed.model.named_buffers()}
    fed.model  # noqa: B018
    evaluate_personalized(fed.model, fed.algorithm, state.params, fed.data, {absent: ClientState()}, 256)
    for n, b in default_buffers(fed.model).items():
        assert torch.equal(dict(fed.model.named_buffers())[n], b)
    assert any(not torch.equal(seen[n], b) for n, b in default_buffers(fed.model).items())


@pytest.mark.parametrize("name", ["fedbn", "local"])
def test_batch_norm_runs_end_to_end_with_checkpoints(name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedmtl.fl.client import mean_buffers
    from fedmtl.runloop.checkpoint import read_checkpoint, save_checkpoint
    from fedmtl.runloop.evaluation import evaluate_global

    fed = federation(config({"name": name}, model=BN_MODEL))
    state = fed.init_state()
    for _ in range(2):
        state, report = fed.round(state)
        assert not report.dropped
    path = save_checkpoint(tmp_path, state, {})
    back, _ = read_checkpoint(path)
    for cid, cs in state.client_states.items():
        for n, b in cs.buffers.items():
            assert torch.equal(back.client_states[cid].buffers[n], b)
    assert fed.round(back)[0].round == 3
    # the global model is scored with the mean of the clients' statistics
    bn = mean_buffers(fed.model, list(state.client_states.values()))
    own = torch.stack([cs.buffers["trunk.net.1.running_mean"] for cs in state.client_states.values()])
    assert torch.allclose(bn["trunk.net.1.running_mean"], own.mean(0))
    if len(fed.data.holdout):
        assert evaluate_global(fed.model, state.params, fed.data, 256, bn)
