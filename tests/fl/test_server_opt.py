"""Each server optimiser's step equals a hand-computed one; absent parameters and their state are untouched."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter

from fedmtl import registry
from fedmtl.config.training import ServerConfig, ServerOptimizer
from fedmtl.fl.server_opt import (
    build_server_optimizer,
    chain,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedyogi,
    scale,
    trace,
)
from fedmtl.tree import flatten, unflatten

P = {"w": torch.tensor([1.0, -2.0]), "head.a": torch.tensor([0.5]), "head.b": torch.tensor([3.0])}
D1 = {"w": torch.tensor([0.2, -0.4]), "head.a": torch.tensor([1.0])}  # head.b: nobody held it
D2 = {"w": torch.tensor([-0.1, 0.3]), "head.a": torch.tensor([-2.0])}


def _run(opt, updates):
    params, state = dict(P), opt.init(P)
    for u in updates:
        params, state = opt.step(params, u, state)
    return params, state


def test_fedavg():
    params, _ = _run(fedavg(0.5), [D1])
    assert torch.allclose(params["w"], torch.tensor([1.1, -2.2]))
    assert torch.allclose(params["head.a"], torch.tensor([1.0]))


def test_fedavgm_hand_computed():
    params, state = _run(fedavgm(lr=1.0, momentum=0.9), [D1, D2])
    m1 = 0.2
    m2 = 0.9 * m1 - 0.1
    assert math.isclose(float(params["w"][0]), 1.0 + m1 + m2, rel_tol=1e-6)
    nest, _ = _run(fedavgm(lr=1.0, momentum=0.9, nesterov=True), [D1])
    assert math.isclose(float(nest["w"][0]), 1.0 + 0.2 + 0.9 * 0.2, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["adagrad", "adam", "yogi"])
def test_adaptive_hand_computed(name):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    make = {
        "adagrad": lambda: fedadagrad(lr, b1, tau),
        "adam": lambda: fedadam(lr, b1, b2, tau),
        "yogi": lambda: fedyogi(lr, b1, b2, tau),
    }[name]
    params, _ = _run(make(), [D1, D2])
    x, m, v = 1.0, 0.0, tau**2
    for g in (0.2, -0.1):  # coordinate w[0], by Reddi et al. 2021 Algorithm 2
        m = b1 * m + (1 - b1) * g
        if name == "adagrad":
            v = v + g * g
        elif name == "adam":
            v = b2 * v + (1 - b2) * g * g
        else:
            v = v - (1 - b2) * g * g * math.copysign(1.0, v - g * g)
        x = x + lr * m / (math.sqrt(v) + tau)
    assert math.isclose(float(params["w"][0]), x, rel_tol=1e-5)


#: every registered server optimiser at its default options (a new one is picked up here)
OPTIMIZERS = {c.name: (lambda c=c: build_server_optimizer(c.config_model())) for c in registry.components("server_optimizer")}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_absent_parameters_and_state_untouched(name):
    opt = OPTIMIZERS[name]()
    params, state = _run(opt, [D1])
    before = flatten(state)
    params2, state2 = opt.step(params, {"w": torch.tensor([0.1, 0.1])}, state)
    assert params2["head.a"] is params["head.a"] and params2["head.b"] is P["head.b"]
    after = flatten(state2)
    assert set(after) == set(before)
    for k, v in after.items():
        if "head" in k:
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pure_and_checkpointable(name):
    opt = OPTIMIZERS[name]()
    snapshot = {k: v.clone() for k, v in P.items()}
    p1, s1 = _run(opt, [D1])
    assert all(torch.equal(P[k], snapshot[k]) for k in P)  # arguments never mutated
    s1_copy = unflatten({k: v.clone() for k, v in flatten(s1).items()})  # a checkpoint round trip
    a, _ = opt.step(p1, D2, s1)
    b, _ = opt.step(p1, D2, s1_copy)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_rejects_unknown_and_misshaped_updates():
    opt = fedavg()
    with pytest.raises(KeyError, match="lacks"):
        opt.step(P, {"nope": torch.zeros(1)}, {})
    with pytest.raises(ValueError, match="shape"):
        opt.step(P, {"w": torch.zeros(3)}, {})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: fedavg(0), "lr must be > 0, got 0"),
        (lambda: trace(1.0), "momentum"),
        (lambda: fedadam(b1=1.0), "b1"),
        (lambda: fedyogi(tau=0), "tau"),
    ],
)
def test_constructor_validation_names_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_chain_composes_in_order():
    t = chain(trace(0.5), scale(2.0))
    state = t.init(P)
    u, state = t.update({"w": torch.tensor([1.0, 1.0])}, state, P)
    u, state = t.update({"w": torch.tensor([1.0, 1.0])}, state, P)
    assert torch.allclose(u["w"], torch.tensor([3.0, 3.0]))  # 2 * (0.5 * 1 + 1)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_built_from_config(name):
    cfg = TypeAdapter(ServerOptimizer).validate_python({"name": name})
    opt = build_server_optimizer(cfg)
    assert opt.name == name
    assert ServerConfig(optimizer={"name": name}).optimizer.name == name
    params, _ = opt.step(P, D1, opt.init(P))
    assert not torch.equal(params["w"], P["w"])
