"""Every algorithm: config round-trip, a whole federated round, a complete personalised model, checkpoints."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import ConfigError, config_from_dict
from fedmtl.fl.aggregation import aggregate_by_group
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.update import ClientUpdate
from fedmtl.runloop.checkpoint import read_checkpoint, save_checkpoint
from fedmtl.runloop.evaluation import evaluate_personalized

from .conftest import config, federation

ALGORITHMS = [
    {"name": "fedavg"},
    {"name": "fedprox", "mu": 0.1},
    {"name": "scaffold"},
    {"name": "local"},
    {"name": "fedper"},
    {"name": "fedrep", "head_epochs": 2},
    {"name": "fedbn"},
    {"name": "ditto", "lam": 0.5},
    {"name": "apfl", "alpha": 0.3},
    {"name": "pfedme", "lam": 5.0, "inner_steps": 2},
    {"name": "ifca", "clusters": 2},
    {"name": "fedem", "components": 2},
    {"name": "fedem", "components": 2, "gate": False},
    {"name": "mocha", "lam": 0.1},
]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a["name"] + ("-paper" if a.get("gate") is False else ""))
def test_round_trip_and_personal_models(algorithm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = federation(config(algorithm))
    assert fed.algorithm.name == algorithm["name"]
    state = fed.init_state()
    for _ in range(2):
        state, report = fed.round(state)
        assert not report.dropped
    assert all(torch.isfinite(v).all() for v in state.params.values())
    for client in fed.data.clients:
        cstate = state.client_states[client.client_id]
        assert not cstate.server  # the round's view of the server state is never kept (outboxes are no state at all)
        personal = fed.algorithm.personal_params(fed.model, state.params, client, cstate)
        assert set(personal) == set(state.params)
    summary, rows = evaluate_personalized(fed.model, fed.algorithm, state.params, fed.data, state.client_states, 256)
    assert len(rows) == 6 and all(0 <= summary[t]["pooled"]["accuracy"] <= 1 for t in ("a", "b"))
    path = save_checkpoint(tmp_path, state, {})
    back, _ = read_checkpoint(path)
    assert set(back.algorithm_state) == set(state.algorithm_state)
    nxt, _ = fed.round(back)  # a resumed run continues
    assert nxt.round == 3


def test_config_validation_names_the_value() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.lam.*got -1"):
        config_from_dict(config({"name": "ditto", "lam": -1}))
    with pytest.raises(ConfigError, match="fedsomething"):
        config_from_dict(config({"name": "fedsomething"}))
    with pytest.raises(ConfigError, match="components"):
        config_from_dict(config({"name": "fedem", "components": 1}))


DP = {"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}}
SECAGG: dict = {"secure_aggregation": {}}
DP_SGD = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}


@pytest.mark.parametrize(
    ("algorithm", "privacy", "message"),
    [
        ({"name": "scaffold"}, DP, r"privacy\.dp covers the aggregated model update only.*'scaffold'.*delta_c"),
        ({"name": "fedem"}, SECAGG, r"privacy\.secure_aggregation covers.*'fedem'.*gate"),
        ({"name": "ifca"}, DP, r"'ifca'.*choice of cluster"),
        ({"name": "mocha"}, SECAGG, r"'mocha'.*task heads"),
        ({"name": "fedem", "gate": False}, DP_SGD, r"dp_sgd.*'fedem'.*allowed: fedavg, fedper, fedbn, local"),
        ({"name": "apfl"}, DP_SGD, r"dp_sgd.*'apfl'"),
        ({"name": "pfedme"}, DP_SGD, r"dp_sgd.*'pfedme'"),
        ({"name": "ifca"}, DP_SGD, r"dp_sgd.*'ifca'"),
    ],
    ids=["scaffold-dp", "fedem-secagg", "ifca-dp", "mocha-secagg", "fedem-dp-sgd", "apfl-dp-sgd", "pfedme-dp-sgd", "ifca-dp-sgd"],
)
def test_privacy_that_part_of_an_upload_escapes_is_refused(algorithm, privacy, message) -> None:  # type: ignore[no-untyped-def]
    """These used to run and report an epsilon (or none) that the extra uploads, the server's reading of
    each upload or the algorithm's own training loop void."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(config(algorithm, privacy=privacy))
    config_from_dict(config({"name": "fedper"}, privacy=privacy))  # the same privacy with an algorithm it covers


def test_heterogeneous_task_sets_aggregate_each_head_over_its_holders() -> None:
    groups = {"shared": ["s"], "task:a": ["ha"], "task:b": ["hb"]}
    ups = [
        ClientUpdate(0, {"s": torch.tensor([1.0]), "ha": torch.tensor([10.0])}, 1, {"a": 1}),
        ClientUpdate(1, {"s": torch.tensor([3.0]), "hb": torch.tensor([20.0])}, 3, {"b": 3}),
        ClientUpdate(2, {"s": torch.tensor([5.0]), "ha": torch.tensor([30.0]), "hb": torch.tensor([40.0])}, 1, {"a": 1, "b": 1}),
    ]
    out = aggregate_by_group(ups, groups)
    assert torch.allclose(out["s"], torch.tensor([(1 + 9 + 5) / 5]))
    assert torch.allclose(out["ha"], torch.tensor([20.0]))  # clients 0 and 2 only
    assert torch.allclose(out["hb"], torch.tensor([(60 + 40) / 4]))  # clients 1 and 2 only


def test_federation_round_moves_heads_only_by_their_holders() -> None:
    fed = federation(config({"name": "fedavg"}))
    state = fed.init_state()
    nxt, _ = fed.round(state.__class__(0, state.params, state.opt_state))
    # every client takes part; a's head moves, so does b's; the update of a's head comes only from a's holders
    plan = fed.plan(state)
    replies = [fed.node.run(plan.payloads[c], fed.data.clients[c], ClientState(), 0)[0] for c in plan.cohort]
    updates, _ = fed.collect(replies)
    head_a = [n for n in fed.groups["task:a"]]
    holders = sorted(u.client_id for u in updates if head_a[0] in u.delta)
    assert holders == [0, 1, 4, 5]
    assert all(not torch.equal(nxt.params[n], state.params[n]) for n in head_a)
