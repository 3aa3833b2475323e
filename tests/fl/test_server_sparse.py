"""FetchSGD's server step (momentum, error accumulation, top-k) against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from fedmtl.config.training import ServerOptimizer
from fedmtl.fl.server_opt import build_server_optimizer, fedavgm
from fedmtl.fl.server_sparse import sparse_fedavgm

P = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.0])}
D1 = {"w": torch.tensor([0.4, -0.1, 0.2, 0.0]), "b": torch.tensor([0.5])}
D2 = {"w": torch.tensor([0.1, 0.3, 0.0, 0.0])}  # b: nobody held it this round


def _run(opt, updates):
    params, state = dict(P), opt.init(P)
    for u in updates:
        params, state = opt.step(params, u, state)
    return params, state


def test_two_rounds_hand_computed_with_masking():
    # lr 0.5, momentum 0.5, top-1 of 4 (fraction 0.25)
    # round 1: u = D1; e = 0.5 u = [.2, -.05, .1, 0]; step = [.2, 0, 0, 0]; e = [0, -.05, .1, 0]; u[0] = 0 -> [0, -.1, .2, 0]
    # round 2: u = .5 u + D2 = [.1, .25, .1, 0]; e += .5 u -> [.05, .075, .15, 0]; step = [0, 0, .15, 0]
    #          e = [.05, .075, 0, 0]; u[2] = 0 -> [.1, .25, 0, 0]
    opt = sparse_fedavgm(lr=0.5, momentum=0.5, fraction=0.25)
    params, state = _run(opt, [D1, D2])
    assert torch.allclose(params["w"], torch.tensor([1.2, 1.0, 1.15, 1.0]))
    assert torch.allclose(state["e"]["w"], torch.tensor([0.05, 0.075, 0.0, 0.0]))
    assert torch.allclose(state["u"]["w"], torch.tensor([0.1, 0.25, 0.0, 0.0]))
    # a one-entry tensor always moves (k >= 1); absent in round 2, it keeps its value and state
    assert torch.allclose(params["b"], torch.tensor([0.25]))
    assert torch.allclose(state["u"]["b"], torch.tensor([0.0]))


def test_without_masking_steps_plus_error_equal_fedavgm():
    # no masking: the emitted steps plus the accumulated error add up to FedAvgM's displacement
    updates = [D1, D2, {"w": torch.tensor([-0.3, 0.2, 0.1, 0.05]), "b": torch.tensor([0.1])}]
    sparse, state = _run(sparse_fedavgm(lr=0.7, momentum=0.9, fraction=0.25, momentum_masking=False), updates)
    dense, _ = _run(fedavgm(lr=0.7, momentum=0.9), updates)
    for k in P:
        assert torch.allclose(sparse[k] + state["e"][k], dense[k], atol=1e-6)
    # round 1 moved one entry of w: 0.7 * 0.4; the rest waits in e
    first, _ = _run(sparse_fedavgm(lr=0.7, momentum=0.9, fraction=0.25, momentum_masking=False), updates[:1])
    assert torch.allclose(first["w"], torch.tensor([1.28, 1.0, 1.0, 1.0]))


def test_fraction_one_is_fedavgm_without_masking():
    updates = [D1, D2]
    a, _ = _run(sparse_fedavgm(lr=1.0, momentum=0.9, fraction=1.0, momentum_masking=False), updates)
    b, _ = _run(fedavgm(lr=1.0, momentum=0.9), updates)
    assert all(torch.allclose(a[k], b[k]) for k in P)


def test_config_builds_and_rejects():
    cfg = TypeAdapter(ServerOptimizer).validate_python({"name": "sparse_fedavgm", "fraction": 0.1})
    opt = build_server_optimizer(cfg)
    assert opt.name == "sparse_fedavgm"
    with pytest.raises(ValueError, match="fraction"):
        TypeAdapter(ServerOptimizer).validate_python({"name": "sparse_fedavgm", "fraction": 0.0})
    with pytest.raises(ValueError, match="fraction"):
        sparse_fedavgm(fraction=1.5)
