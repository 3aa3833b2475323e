"""Nothing a client sends crashes the server or puts a non-finite value into the global model (issue 17):
bounded sample claims, finite aggregates, and the attack zoo of the Byzantine simulation."""

from __future__ import annotations

import dataclasses
import functools
import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from personal.conftest import config, federation

from fedmtl.config.training import ByzantineConfig
from fedmtl.fl.byzantine import ATTACKS, alie_z, attack, flip_labels, honest_view, poison_client, tamper_reply
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.federation import Applied, largest_entry, non_finite
from fedmtl.fl.robust import TrimmedMean
from fedmtl.fl.update import ClientUpdate, bound_claims
from fedmtl.tasks import Task


# -- claimed sample counts ---------------------------------------------------------------------
def test_claims_are_clamped_to_what_the_server_knows():
    n, tasks, notes = bound_claims(1e40, {"a": 10**12, "b": -3, "zzz": 5}, 100, {"a": 60, "b": 40})
    assert (n, tasks) == (100, {"a": 60, "b": 0})
    assert notes == [
        "task_samples['a'] 1000000000000 clamped to 60",
        "task_samples['b'] -3 clamped to 0",
        "task_samples for 'zzz', a task it does not hold, ignored",
        "num_samples 1e+40 clamped to 100",
    ]
    assert bound_claims(50, {"a": 20}, 100, {"a": 60}) == (50, {"a": 20}, [])


@pytest.mark.parametrize("bad", [[1, 2], "12", None, float("nan"), True, {"a": 1}])
def test_claims_that_are_not_numbers_are_refused(bad):
    with pytest.raises(ValueError, match="num_samples must be a number"):
        bound_claims(bad, {}, 10, {})
    with pytest.raises(ValueError):
        bound_claims(1, {"a": bad}, 10, {"a": 10})
    with pytest.raises(ValueError, match="task_samples must map"):
        bound_claims(1, [("a", 1)], 10, {"a": 10})


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(), st.floats(allow_nan=False)), st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(allow_nan=False)))
def test_bounded_claims_always_lie_within_the_known_counts(num, tasks):
    n, out, _ = bound_claims(num, tasks, 100, {"a": 60, "b": 40})
    assert 0 <= n <= 100 and set(out) <= {"a", "b"} and all(0 <= out[t] <= {"a": 60, "b": 40}[t] for t in out)


def test_an_inflated_claim_takes_no_more_weight_than_the_client_holds():
    fed = federation(config())
    state = fed.init_state()
    plan = fed.plan(state)
    replies = [fed.node.run(plan.payloads[c], fed.data.clients[c], ClientState(), 0)[0] for c in plan.cohort]
    cfg = ByzantineConfig(attack="sample_inflation", scale=1e40)
    liar = tamper_reply(replies[0], cfg, fed.up, [])
    assert liar.num_samples == 1e40 * replies[0].num_samples
    updates, dropped = fed.collect([liar, *replies[1:]])
    assert not dropped
    assert updates[0].num_samples == fed.data.clients[liar.client_id].num_train
    assert updates[0].task_samples == replies[0].task_samples
    nxt, applied = fed.apply(state, updates, {})
    assert not non_finite(nxt.params) and not applied.dropped


# -- non-finite aggregates -----------------------------------------------------------------------
def _updates(fed, state):
    plan = fed.plan(state)
    replies = [fed.node.run(plan.payloads[c], fed.data.clients[c], ClientState(), 0)[0] for c in plan.cohort]
    updates, _ = fed.collect(replies)
    return updates


def test_an_update_that_overflows_the_aggregate_is_dropped_with_its_reason():
    fed = federation(config(server={"rounds": 2, "clients_per_round": 6, "aggregator": {"name": "trimmed_mean", "beta": 0.0}}))
    state = fed.init_state()
    updates = _updates(fed, state)
    big = [dataclasses.replace(u, delta={n: torch.full_like(d, 3e38) for n, d in u.delta.items()}) for u in updates[:3]]
    assert torch.isinf(TrimmedMean(0.0)(torch.tensor([[3e38], [3e38], [1.0]]), torch.ones(3))).all()
    nxt, applied = fed.apply(state, big + updates[3:], {})
    # three finite 3e38 updates overflow the mean, two still do, one alone does not: two are dropped
    assert len(applied.dropped) == 2 and set(applied.dropped) < {u.client_id for u in big} and not applied.skipped
    assert all("non-finite" in why and "3e+38" in why for why in applied.dropped.values())
    assert nxt.round == 1 and not non_finite(nxt.params)
    assert any(not torch.equal(nxt.params[n], state.params[n]) for n in state.params)  # the honest rest was applied


def test_a_round_whose_model_would_be_non_finite_is_skipped():
    fed = federation(config(server={"rounds": 2, "clients_per_round": 6, "optimizer": {"name": "fedavg", "lr": 1e30}}))
    state = fed.init_state()
    updates = [dataclasses.replace(u, delta={n: torch.full_like(d, 1e10) for n, d in u.delta.items()}) for u in _updates(fed, state)]
    nxt, applied = fed.apply(state, updates, {})
    assert "non-finite" in applied.skipped and nxt.round == state.round + 1
    assert all(torch.equal(nxt.params[n], state.params[n]) for n in state.params)
    assert nxt.opt_state.keys() == state.opt_state.keys()


def test_largest_entry_ranks_updates_beyond_float32():
    u = ClientUpdate(0, {"w": torch.tensor([1.0, -3e38])}, 1, {})
    assert largest_entry(u) == pytest.approx(3e38, rel=1e-6)
    assert non_finite({"a": torch.tensor([1.0]), "b": torch.tensor([math.inf])}) == ["b"]
    assert Applied().skipped == ""


def test_scaled_3e38_run_finishes_and_never_checkpoints_non_finite_params(tmp_path, tiny_config):
    """The issue's reproduction: `server.byzantine: {fraction: 0.1, attack: scaled, scale: 3e38}`."""
    import fedmtl
    from fedmtl.runloop.checkpoint import load_latest

    cfg = {**tiny_config, "server": {"rounds": 3, "clients_per_round": 10, "byzantine": {"fraction": 0.1, "attack": "scaled", "scale": 3e38}}}
    res = fedmtl.Experiment(cfg).run(progress=True)
    assert res.summary["rounds_completed"] == 3
    state, _ = load_latest(res.run_dir)
    assert not non_finite(state.params)


# -- the attack zoo ---------------------------------------------------------------------------------
def test_every_attack_is_a_config_value():
    for name in ATTACKS:
        assert ByzantineConfig(attack=name).attack == name


def test_alie_follows_baruch_et_al():
    # n = 10 clients, m = 2 attackers: s = floor(10/2 + 1) - 2 = 4, z_max = Phi^-1(6/10)
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    honest = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    view = honest_view(honest, 10, 2)
    assert view.mean["w"].tolist() == [2.0, 0.0] and view.std["w"].tolist() == [1.0, 0.0]
    out = attack({"w": torch.zeros(2)}, ByzantineConfig(attack="alie", scale=2.0), torch.Generator(), honest=view)
    assert out["w"].tolist() == pytest.approx([2.0 + 2 * NormalDist().inv_cdf(0.6), 0.0])


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    view = honest_view([{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 0.0])}], 3, 1)
    out = attack({"w": torch.zeros(2)}, ByzantineConfig(attack="ipm", scale=0.5), torch.Generator(), honest=view)
    assert out["w"].tolist() == [-1.0, 0.5]
    with pytest.raises(ValueError, match="needs the honest updates"):
        attack({"w": torch.zeros(2)}, ByzantineConfig(attack="ipm"), torch.Generator())


def test_nan_attack_and_untouched_updates():
    d = {"w": torch.ones(3)}
    assert torch.isnan(attack(d, ByzantineConfig(attack="nan"), torch.Generator())["w"]).all()
    for name in ("sample_inflation", "payload_bomb", "label_flip"):
        assert torch.equal(attack(d, ByzantineConfig(attack=name), torch.Generator())["w"], d["w"])


def test_label_flip():
    assert flip_labels(torch.tensor([0, 1, 2]), Task("a", "multiclass", 3)).tolist() == [2, 1, 0]
    assert flip_labels(torch.tensor([0.0, 1.0]), Task("b", "binary")).tolist() == [1.0, 0.0]
    assert flip_labels(torch.tensor([0.5]), Task("r", "regression")).tolist() == [-0.5]
    fed = federation(config())
    client = fed.data.clients[4]
    flipped = poison_client(client, ByzantineConfig(attack="label_flip"), fed.data.tasks)
    assert torch.equal(flipped.train.y["a"], 2 - client.train.y["a"]) and torch.equal(flipped.train.x, client.train.x)
    assert poison_client(client, ByzantineConfig(attack="ipm"), fed.data.tasks) is client


@pytest.mark.parametrize("name", ["nan", "payload_bomb", "sample_inflation", "label_flip", "alie", "ipm", "scaled"])
def test_each_attack_runs_a_round_and_the_model_stays_finite(name):
    scale = {"sample_inflation": 1e40, "scaled": 3e38}.get(name, 1.0)
    fed = federation(config(server={"rounds": 2, "clients_per_round": 6, "byzantine": {"fraction": 0.34, "attack": name, "scale": scale}}))
    attackers = fed.byzantine
    assert len(attackers) == 2
    state = fed.init_state()
    for _ in range(2):
        state, report = fed.round(state)
        assert not non_finite(state.params)
    if name == "nan":
        assert set(report.dropped) == attackers and all("NaN" in report.dropped[c] for c in attackers)
    if name == "payload_bomb":
        assert set(report.dropped) == attackers and all("shape [268435456]" in report.dropped[c] or "oversized" in report.dropped[c] for c in attackers)
    if name in ("sample_inflation", "label_flip", "alie", "ipm"):
        assert not report.dropped


@functools.cache
def _fed_with(aggregator: str):
    agg = {"name": aggregator, **({"beta": 0.0} if aggregator == "trimmed_mean" else {})}
    fed = federation(config(server={"rounds": 2, "clients_per_round": 6, "aggregator": agg}))
    return fed, fed.init_state()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["mean", "trimmed_mean", "median", "norm_bounded"]),
    st.lists(st.floats(min_value=-3.4e38, max_value=3.4e38), min_size=6, max_size=6),
    st.lists(st.integers(0, 10**6), min_size=6, max_size=6),
)
def test_whatever_finite_updates_arrive_the_model_stays_finite(aggregator, values, weights):
    """Property: updates of any finite size (each client's delta filled with one value) and any weights
    leave a finite model; a client is dropped or the round skipped only when the aggregate overflowed."""
    fed, state = _fed_with(aggregator)
    names = {c.client_id: fed.algorithm.uploaded_names(fed.model, c) for c in fed.data.clients}
    updates = [
        ClientUpdate(c, {n: torch.full(fed.shapes[n], v) for n in names[c]}, w, {t: w for t in fed.data.clients[c].tasks})
        for c, v, w in zip(range(6), values, weights)
    ]
    nxt, applied = fed.apply(state, updates, {})
    assert not non_finite(nxt.params) and nxt.round == state.round + 1
    if applied.skipped:
        assert all(torch.equal(nxt.params[n], state.params[n]) for n in state.params)
