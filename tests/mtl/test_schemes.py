"""Joint-optimisation schemes: alternating and Lagrangian."""

from __future__ import annotations

import pytest
import torch

from fedmtl.mtl import Alternating, Lagrangian, MultiTaskObjective
from fedmtl.mtl.balancers import EqualWeighting
from fedmtl.mtl.models import HardSharingModel
from fedmtl.mtl.models.trunks import MLPTrunk

from .conftest import TASKS, synthetic


def model() -> HardSharingModel:
    torch.manual_seed(0)
    return HardSharingModel(MLPTrunk([12], [16]), 16, TASKS)


def losses_of(m, x, y, tasks=None):  # type: ignore[no-untyped-def]
    p = m(x, tasks)
    return {t: m.tasks[t].loss(p[t], y[t]) for t in p}


@pytest.mark.parametrize("every", ["step", "epoch"])
def test_alternating_one_task_at_a_time(every: str) -> None:
    x, y = synthetic(32)
    m = model()
    names = [t.name for t in TASKS]
    obj = MultiTaskObjective(EqualWeighting(), names, scheme=Alternating(names, every))  # type: ignore[arg-type]
    state = obj.init()
    for k in range(6):
        m.zero_grad(set_to_none=True)
        step, epoch = (k, 0) if every == "step" else (0, k)
        state["step"] = torch.tensor(step)
        state, log = obj.backward(m, losses_of(m, x, y), state, epoch=epoch)
        active = names[k % 3]
        assert log["active_task"] == k % 3
        for t in names:
            head_grads = [p.grad for p in m.heads[t].parameters()]
            assert all(g is None for g in head_grads) == (t != active)
        # the shared parameters follow the active task alone
        m2 = model()
        m2.load_state_dict(m.state_dict())
        m2.zero_grad(set_to_none=True)
        losses_of(m2, x, y)[active].backward()
        for p, q in zip(m.trunk.parameters(), m2.trunk.parameters()):
            assert torch.allclose(p.grad, q.grad)


def test_lagrangian_multiplier_rises_then_falls_to_zero() -> None:
    names = ["main", "aux"]
    sch = Lagrangian(names, "main", {"aux": 1.0}, dual_lr=0.5)
    state = sch.init(names)
    trace = []
    for f_aux in [3.0, 3.0, 2.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]:  # violated, violated, ..., then satisfied
        w, state, log = sch.weights(torch.tensor([1.0, f_aux]), state, 0, 0)
        assert float(w[0]) == 1.0 and float(w[1]) == log["multiplier/aux"]
        trace.append(float(state["multipliers"][1]))
        assert log["violation/aux"] == pytest.approx(f_aux - 1.0)
    assert trace[:3] == pytest.approx([1.0, 2.0, 2.5])  # lambda += 0.5 * (f - eps) while violated
    assert trace[3:8] == pytest.approx([2.25, 2.0, 1.6, 1.2, 0.8])
    assert trace[-1] == 0.0 and trace[-2] == pytest.approx(0.0, abs=1e-6)  # falls, projected at zero once the constraint holds


def test_lagrangian_objective_weights_and_log() -> None:
    x, y = synthetic(32)
    m = model()
    names = [t.name for t in TASKS]
    obj = MultiTaskObjective(EqualWeighting(), names, scheme=Lagrangian(names, "digit", {"parity": 0.0}, dual_lr=1.0))
    state = obj.init()
    state, log = obj.backward(m, losses_of(m, x, y), state)
    assert log["weight/digit"] == 1.0 and log["weight/parity"] == 0.0 and log["weight/value"] == 0.0
    assert all(p.grad is None for p in m.heads["value"].parameters())
    assert float(state["scheme"]["multipliers"][1]) > 0  # parity loss > 0 = eps: violated
    state, log = obj.backward(m, losses_of(m, x, y), state)
    assert log["weight/parity"] > 0 and "multiplier/parity" in log


def test_lagrangian_validation() -> None:
    with pytest.raises(ValueError, match="main task"):
        Lagrangian(["a", "b"], "a", {"a": 1.0})
    with pytest.raises(ValueError, match="dual_lr"):
        Lagrangian(["a", "b"], "a", {"b": 1.0}, dual_lr=0)
