"""Method-specific properties: limits that reduce to known algorithms, hand computations, closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from fedmtl.data import from_arrays
from fedmtl.fl.algorithm import FedAvg, ServerContext
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization import Ditto, FedProx, Mocha, Scaffold, omega_update
from fedmtl.fl.seeding import generator, spawn
from fedmtl.fl.update import ClientUpdate

from .conftest import config, federation


def _setup(algorithm=None, **over):  # type: ignore[no-untyped-def]
    fed = federation(config(algorithm, **over))
    return fed, fed.init_state()


def test_fedprox_with_mu_zero_is_fedavg() -> None:
    fed, state = _setup()
    client = fed.data.clients[4]
    a = FedAvg().local_train(fed.trainer, state.params, client, ClientState(), generator(0, "client", 0, 4))
    b = FedProx(0.0).local_train(fed.trainer, state.params, client, ClientState(), generator(0, "client", 0, 4))
    c = FedProx(1.0).local_train(fed.trainer, state.params, client, ClientState(), generator(0, "client", 0, 4))
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)
    assert any(not torch.allclose(a.params[n], c.params[n]) for n in a.params)


def test_scaffold_control_variates_against_a_hand_computation() -> None:
    # one local step (batch holds every row): y = x - lr (g(x) - c_i + c) and c_i+ = g(x)
    fed, state = _setup(client={"epochs": 1, "batch_size": 10_000, "optimizer": {"name": "sgd", "lr": 0.1}})
    client = fed.data.clients[5]
    names = Scaffold().uploaded_names(fed.model, client)
    g0 = torch.Generator().manual_seed(1)
    c = {n: 0.01 * torch.randn(state.params[n].shape, generator=g0) for n in state.params}
    c_i = {n: 0.02 * torch.randn(state.params[n].shape, generator=g0) for n in names}
    res = Scaffold().local_train(fed.trainer, state.params, client, ClientState(algorithm={"scaffold_c": c_i}, server={"c": c}), generator(0, "client", 0, 5))
    assert res.metrics["steps"] == 1
    # the gradient at x, by hand
    model = fed.model
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(state.params[n])
    model.zero_grad()
    preds = model(client.train.x, list(client.tasks))
    sum(model.tasks[t].loss(preds[t], client.train.y[t]) for t in client.tasks).backward()
    g = {n: named[n].grad.clone() for n in names}
    for n in names:
        assert torch.allclose(res.params[n], state.params[n] - 0.1 * (g[n] - c_i[n] + c[n]), atol=1e-6)
        assert torch.allclose(res.state.algorithm["scaffold_c"][n], g[n], atol=1e-4)
        assert torch.allclose(res.outbox["delta_c"][n], g[n] - c_i[n], atol=1e-4)
    # server: c <- c + (1/N) sum_i delta_c_i, N = clients holding the parameter
    up = ClientUpdate(5, {n: res.params[n] - state.params[n] for n in names}, client.num_train, {t: 1 for t in client.tasks})
    ctx = ServerContext(state.params, state.params, {"c": c}, [up], {5: res.outbox}, fed.groups, fed.population)
    _, new = Scaffold().server_update(ctx)
    head_a = fed.groups["task:a"][0]
    assert fed.population[head_a] == 4 and fed.population[names[0]] == 6
    assert torch.allclose(new["c"][head_a], c[head_a] + (g[head_a] - c_i[head_a]) / 4, atol=1e-5)
    assert torch.allclose(new["c"][names[0]], c[names[0]] + (g[names[0]] - c_i[names[0]]) / 6, atol=1e-5)


def test_ditto_limits() -> None:
    fed, state = _setup()
    client = fed.data.clients[4]
    gen = lambda: generator(0, "client", 0, 4)  # noqa: E731
    plain = FedAvg().local_train(fed.trainer, state.params, client, ClientState(), gen())
    # lam -> inf: the global model is FedAvg's, the personal model is pinned to the received global model
    huge = Ditto(1e12).local_train(fed.trainer, state.params, client, ClientState(), gen())
    assert all(torch.equal(plain.params[n], huge.params[n]) for n in plain.params)
    assert all(torch.allclose(v, state.params[n], atol=1e-6) for n, v in huge.state.algorithm["personal"].items())
    # lam = 0: the personal model is local training alone, whatever global model arrives
    r1 = Ditto(0.0).local_train(fed.trainer, state.params, client, ClientState(), gen())
    other_global = {n: v + 1.0 for n, v in state.params.items()}
    r2 = Ditto(0.0).local_train(fed.trainer, other_global, client, r1.state, generator(0, "client", 1, 4))
    # the personal stream is spawned from the client's generator before anything draws from it
    local1 = fed.trainer.train(state.params, client, ClientState(), spawn(generator(0, "client", 0, 4), "ditto/personal"))
    personal2 = spawn(generator(0, "client", 1, 4), "ditto/personal")
    local2 = fed.trainer.train({**other_global, **local1.params}, client, ClientState(objective=local1.state.objective), personal2)
    for n, v in r2.state.algorithm["personal"].items():
        assert torch.allclose(v, local2.params[n], atol=1e-6)


def test_fedper_never_sends_heads() -> None:
    fed, state = _setup({"name": "fedper"})
    plan = fed.plan(state)
    cstates = {}
    replies = []
    for cid in plan.cohort:
        reply, cstates[cid] = fed.node.run(plan.payloads[cid], fed.data.clients[cid], ClientState(), 0)
        replies.append(reply)
    updates, dropped = fed.collect(replies)
    assert not dropped
    for u in updates:
        assert u.delta and all(not n.startswith("heads.") for n in u.delta)
        assert all(n.startswith("heads.") for n in cstates[u.client_id].algorithm["personal"])
    # the broadcast carries no heads either, and the heads a client keeps are its own
    received = fed.node.receive(plan.payloads[0], fed.data.clients[0])
    assert all(not n.startswith("heads.") for n in received)
    nxt, _ = fed.apply(state, updates, cstates)
    heads = [n for n in state.params if n.startswith("heads.")]
    assert all(torch.equal(nxt.params[n], state.params[n]) for n in heads)


def _two_cluster_ifca(personal_model: str = "trained"):  # type: ignore[no-untyped-def]
    """Eight clients, two opposite labellings of the same inputs; IFCA with two clusters, five rounds."""
    rng = np.random.default_rng(0)
    n_per, clients = 80, 8
    x = rng.normal(size=(n_per * clients, 4)).astype(np.float32)
    cid = np.repeat(np.arange(clients), n_per)
    flip = (cid % 2 == 1)  # odd clients: the opposite labelling
    y = ((x[:, 0] > 0) ^ flip).astype(int)
    src = from_arrays(x, {"a": y}, {"a": "binary"}, client_ids=cid)
    cfg = config(
        {"name": "ifca", "clusters": 2, "personal_model": personal_model},
        data={
            "num_clients": clients,
            "source": {"name": "table", "path": "in-memory", "client_column": "cid", "tasks": [{"name": "a", "kind": "binary"}]},
            "partition": {"name": "natural"},
        },
        server={"rounds": 5, "clients_per_round": clients},
        client={"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.2}},
    )
    fed = federation(cfg, src)
    state = fed.init_state()
    for _ in range(5):
        state, _ = fed.round(state)
    return fed, state


def test_ifca_separates_two_clusters() -> None:
    fed, state = _two_cluster_ifca()
    chosen = {c.client_id: int(state.client_states[c.client_id].algorithm["cluster"]) for c in fed.data.clients}
    even = {chosen[c] for c in chosen if c % 2 == 0}
    odd = {chosen[c] for c in chosen if c % 2 == 1}
    assert len(even) == 1 and len(odd) == 1 and even != odd, chosen


def test_ifca_re_picks_the_current_cluster_model_at_evaluation() -> None:
    fed, state = _two_cluster_ifca("cluster")
    views = fed.server_views(state, range(fed.data.num_clients))
    chosen = {int(state.client_states[c].algorithm["cluster"]) for c in (0, 2)}
    assert len(chosen) == 1  # the even clients' cluster
    (even,) = chosen
    clusters = state.algorithm_state["clusters"]
    for cid in (0, 1):
        client = fed.data.clients[cid]
        personal = fed.algorithm.personal_params(fed.model, state.params, client, fed.client_view(state, cid, views[cid]))
        j = even if cid % 2 == 0 else 1 - even
        for name, value in clusters[str(j)].items():  # the cluster model now, not the client's older trained copy
            torch.testing.assert_close(personal[name], value)
        trained = fed.algorithm.personal_params(fed.model, state.params, client, state.client_states[cid])
        assert trained.keys() == personal.keys()  # without the server's view: the model from its last round


def test_mocha_omega_matches_the_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)  # 5 clients, 12 head weights each
    omega = omega_update(w)
    root = scipy.linalg.sqrtm((w @ w.T).numpy()).real
    assert np.allclose(omega.numpy(), root / np.trace(root), atol=1e-8)
    assert abs(float(omega.trace()) - 1) < 1e-10


def test_mocha_server_step_updates_w_and_omega() -> None:
    fed, state = _setup({"name": "mocha", "lam": 0.1, "eps": 0.1})
    state, _ = fed.round(state)
    entry = state.algorithm_state["tasks"]["a"]
    holders = [0, 1, 4, 5]
    assert entry["seen"].nonzero().flatten().tolist() == holders
    names = fed.groups["task:a"]
    for cid in holders:
        personal = state.client_states[cid].algorithm["personal"]
        assert torch.allclose(entry["W"][cid], torch.cat([personal[n].reshape(-1) for n in names]), atol=1e-6)
    idx = torch.tensor(holders)
    assert torch.allclose(entry["omega"][idx][:, idx], omega_update(entry["W"][idx], 0.1), atol=1e-6)
    # the next round pulls every holder's head by lam * tr(W Omega^-1 W^T)
    state, _ = fed.round(state)
    assert Mocha(0.1, 0.1).name == "mocha"


def test_apfl_alpha_moves_towards_the_model_that_fits_the_client() -> None:
    """Gradient descent on alpha: with a well-fitted local model v and an untrained global w, alpha grows."""
    fed = federation(config({"name": "apfl", "alpha": 0.5, "alpha_lr": 0.5}))
    client, start = fed.data.clients[4], fed.init_state().params
    fitted = fed.trainer.train(start, client, ClientState(), torch.Generator().manual_seed(0), epochs=20).params
    state = ClientState(algorithm={"apfl_v": fitted, "apfl_alpha": torch.tensor(0.5)})
    res = fed.algorithm.local_train(fed.trainer, start, client, state, torch.Generator().manual_seed(1))
    assert 0.5 < float(res.state.algorithm["apfl_alpha"]) <= 1.0
    # the personal model is alpha v + (1 - alpha) w with the current global w
    a = res.state.algorithm["apfl_alpha"]
    personal = fed.algorithm.personal_params(fed.model, start, client, res.state)
    n = "trunk.net.0.weight"
    assert torch.allclose(personal[n], a * res.state.algorithm["apfl_v"][n] + (1 - a) * start[n])
    # alpha_lr = 0 keeps alpha where it was
    fixed = federation(config({"name": "apfl", "alpha": 0.75, "alpha_lr": 0.0}))
    res = fixed.algorithm.local_train(fixed.trainer, start, client, ClientState(), torch.Generator().manual_seed(1))
    assert float(res.state.algorithm["apfl_alpha"]) == 0.75


def test_pfedme_personal_model_is_pinned_to_w_by_a_large_lambda() -> None:
    """theta minimises f + lam/2 ||theta - w||^2: within ~|grad f| / lam of w (steps lr * lam = personal_lr * lam = 0.5)."""
    cfg = config({"name": "pfedme", "lam": 100.0, "inner_steps": 5, "personal_lr": 0.005})
    cfg["client"]["optimizer"]["lr"] = 0.005
    fed = federation(cfg)
    client, start = fed.data.clients[4], fed.init_state().params
    res = fed.algorithm.local_train(fed.trainer, start, client, ClientState(), torch.Generator().manual_seed(0))
    gaps = [float((theta - res.params[n]).abs().max()) for n, theta in res.state.algorithm["personal"].items()]
    assert max(gaps) < 0.02
    moved = max(float((res.params[n] - start[n]).abs().max()) for n in res.params)
    assert moved > 2 * max(gaps)  # w itself trained: the bound is not just "nothing moved"


def _loss_sum(fed, params, client, weights):  # type: ignore[no-untyped-def]
    """sum_t weights[t] * mean loss_t of ``params`` on the client's whole training split (by hand)."""
    from torch.func import functional_call

    preds = functional_call(fed.model, params, (client.train.x, list(client.tasks)))
    return sum(weights[t] * fed.model.tasks[t].loss(preds[t], client.train.y[t]) for t in client.tasks)


def test_methods_with_their_own_loops_use_the_configured_balancer() -> None:
    """pFedMe, one minibatch, one inner step: theta = w - plr g, w' = w - lr lam (w - theta) with g the
    gradient of the *balanced* loss (static weights a: 1, b: 3), not of the plain sum."""
    weights = {"a": 1.0, "b": 3.0}
    cfg = config(
        {"name": "pfedme", "lam": 2.0, "inner_steps": 1, "personal_lr": 0.05},
        mtl={"balancer": {"name": "static", "weights": weights}},
        client={"epochs": 1, "batch_size": 10_000, "optimizer": {"name": "sgd", "lr": 0.1}},
    )
    fed = federation(cfg)
    client, start = fed.data.clients[4], fed.init_state().params
    assert client.tasks == ("a", "b")
    res = fed.algorithm.local_train(fed.trainer, start, client, ClientState(), torch.Generator().manual_seed(0))
    names = list(res.params)
    leaves = {n: start[n].detach().clone().requires_grad_() for n in names}
    grads = dict(zip(names, torch.autograd.grad(_loss_sum(fed, {**start, **leaves}, client, weights), list(leaves.values()))))
    for n in names:
        theta = start[n] - 0.05 * grads[n]
        torch.testing.assert_close(res.state.algorithm["personal"][n], theta, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(res.params[n], start[n] - 0.1 * 2.0 * (start[n] - theta), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "algorithm",
    [{"name": "apfl", "alpha": 0.5}, {"name": "pfedme", "lam": 5.0, "inner_steps": 2}, {"name": "fedem", "components": 2}],
    ids=lambda a: a["name"],
)
def test_gradient_balancers_drive_the_methods_with_their_own_loops(algorithm) -> None:  # type: ignore[no-untyped-def]
    plain = federation(config(algorithm))
    balanced = federation(config(algorithm, mtl={"balancer": {"name": "pcgrad"}}))
    client = plain.data.clients[4]
    outs = []
    for fed in (plain, balanced):
        server = fed.algorithm.server_init(fed.init_state().params, 6, torch.Generator().manual_seed(0)) if algorithm["name"] == "fedem" else {}
        state = ClientState(server=server)
        res = fed.algorithm.local_train(fed.trainer, fed.init_state().params, client, state, torch.Generator().manual_seed(0))
        assert all(torch.isfinite(v).all() for v in res.params.values())
        assert res.state.objective or "fedem_objective" in res.state.algorithm  # the balancer's state persists
        outs.append(res.params)
    assert any(not torch.allclose(outs[0][n], outs[1][n]) for n in outs[0])  # PCGrad changed the steps


def test_spawned_stream_leaves_its_parent_untouched() -> None:
    parent = torch.Generator().manual_seed(7)
    twin = torch.Generator().manual_seed(7)
    child = spawn(parent, "ditto/personal")
    # the parent draws what it would have drawn without the spawn: a stream that can run alongside it
    assert torch.equal(torch.randperm(50, generator=parent), torch.randperm(50, generator=twin))
    # the same state and purpose give the same child; another purpose or another parent state another one
    again = spawn(torch.Generator().manual_seed(7), "ditto/personal")
    assert torch.equal(torch.rand(8, generator=child), torch.rand(8, generator=again))
    other_purpose = spawn(torch.Generator().manual_seed(7), "other")
    other_state = spawn(torch.Generator().manual_seed(8), "ditto/personal")
    fresh = spawn(torch.Generator().manual_seed(7), "ditto/personal")
    first = torch.rand(8, generator=fresh)
    assert not torch.equal(first, torch.rand(8, generator=other_purpose))
    assert not torch.equal(first, torch.rand(8, generator=other_state))


def test_ditto_global_model_draws_fedavgs_batches() -> None:
    fed, state = _setup()
    client = fed.data.clients[3]
    plain = FedAvg().local_train(fed.trainer, state.params, client, ClientState(), generator(0, "client", 0, 3))
    ditto = Ditto(0.5).local_train(fed.trainer, state.params, client, ClientState(), generator(0, "client", 0, 3))
    assert all(torch.equal(plain.params[n], ditto.params[n]) for n in plain.params)
