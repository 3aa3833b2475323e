"""Sharing schemes: parameter groups, task subsets, penalties in closed form, and short training runs that learn."""

from __future__ import annotations

import pytest
import torch

from fedmtl import registry
from fedmtl.config import model as model_cfg
from fedmtl.config.mtl import MTLConfig
from fedmtl.mtl import build_model, build_objective
from fedmtl.mtl.models import DistillationModel, LTBModel, MTRLModel, SoftSharingModel
from fedmtl.mtl.models.dselect_k import DSelectKGate, smooth_step
from fedmtl.mtl.models.mtrl import closed_form_omega
from fedmtl.mtl.models.trunks import MLPTrunk, WindowMaxPool1d

from .conftest import TASKS, synthetic

#: every registered model's config model: a new model is picked up here without editing this file
MODELS = [c.config_model for c in registry.components('model')]

SMALL = {
    model_cfg.HardSharing: dict(trunk=model_cfg.MLPTrunk(hidden=[32])),
    model_cfg.SharedEncoder: dict(trunk=model_cfg.MLPTrunk(hidden=[32]), tower_hidden=[16]),
    model_cfg.SoftSharing: dict(trunk=model_cfg.MLPTrunk(hidden=[32])),
    model_cfg.CrossStitch: dict(hidden=[32, 16]),
    model_cfg.MTAN: dict(hidden=[32, 16]),
    model_cfg.MMoE: dict(num_experts=3, expert_hidden=[16]),
    model_cfg.CGC: dict(expert_hidden=[16]),
    model_cfg.PLE: dict(expert_hidden=[16]),
    model_cfg.DSelectK: dict(num_experts=3, k=2, expert_hidden=[16]),
    model_cfg.LTB: dict(hidden=[32, 16, 16], branches=[1, 2]),
    model_cfg.MTRL: dict(trunk=model_cfg.MLPTrunk(hidden=[32]), adapter_dim=8),
    model_cfg.Distillation: dict(trunk=model_cfg.MLPTrunk(hidden=[32])),
    model_cfg.ImportedModel: dict(target="mtl.user_net:make", kwargs={"hidden": 16}),
}
ALL = [cls(**SMALL[cls]) for cls in MODELS]
IDS = [c.name for c in ALL]  # type: ignore[attr-defined]
NAMES = [t.name for t in TASKS]


def test_every_model_config_is_covered() -> None:
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("cfg", ALL, ids=IDS)
def test_groups_and_task_subsets(cfg) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = build_model(cfg, [12], TASKS)
    groups = m.param_groups()
    assert set(groups) <= {"shared", *[f"task:{t}" for t in NAMES]}
    for t in NAMES:
        assert groups.get(f"task:{t}"), f"{cfg.name} has no parameters for task {t}"
    x, _ = synthetic(8)
    full = m(x)
    assert set(full) == set(NAMES) and full["digit"].shape == (8, 4) and full["parity"].shape == (8, 1)
    sub = m(x, ["parity"])
    assert list(sub) == ["parity"] and torch.allclose(sub["parity"], full["parity"])
    # a task's own parameters never receive gradient from another task's loss alone
    m.zero_grad(set_to_none=True)
    TASKS[1].loss(sub["parity"], torch.ones(8)).backward()
    for n, p in m.named_parameters():
        if m.group_of(n) == "task:value" and cfg.name not in ("cross_stitch", "ple"):
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0, n
    with pytest.raises(KeyError, match="unknown task"):
        m(x, ["nope"])


@pytest.mark.parametrize("cfg", ALL, ids=IDS)
def test_short_training_learns(cfg) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    x, y = synthetic(256)
    m = build_model(cfg, [12], TASKS)
    obj = build_objective(MTLConfig(), NAMES)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    state = obj.init()

    def losses() -> dict[str, torch.Tensor]:
        p = m(x)
        return {t: m.tasks[t].loss(p[t], y[t]) for t in NAMES}

    with torch.no_grad():
        start = {t: float(v) for t, v in losses().items()}
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        state, _ = obj.backward(m, losses(), state)
        opt.step()
    with torch.no_grad():
        end = {t: float(v) for t, v in losses().items()}
    for t in NAMES:
        assert end[t] < 0.6 * start[t], (cfg.name, t, start[t], end[t])


def test_soft_sharing_penalty_gradient_closed_form() -> None:
    torch.manual_seed(0)
    m = SoftSharingModel(lambda: (MLPTrunk([5], [4]), 4), TASKS, strength=0.3)
    pen = m.penalty()
    assert pen is not None
    grads = torch.autograd.grad(pen, list(m.trunks.parameters()))
    by_task = {t: list(m.trunks[t].parameters()) for t in NAMES}
    k = 0
    for t in NAMES:
        for j, p in enumerate(by_task[t]):
            mean = torch.stack([by_task[s][j] for s in NAMES]).mean(0)
            assert torch.allclose(grads[k], 2 * 0.3 * (p - mean).detach(), atol=1e-6)
            k += 1
    # value: lambda * sum_t ||theta_t - mean||^2
    total = sum(((torch.stack(ps) - torch.stack(ps).mean(0)) ** 2).sum() for ps in zip(*by_task.values()))
    assert torch.allclose(pen, 0.3 * total)


def test_mtrl_omega_closed_form_and_penalty() -> None:
    torch.manual_seed(0)
    m = MTRLModel(MLPTrunk([5], [6]), 6, TASKS, adapter_dim=3, strength=0.1, eps=0.0)
    w = m.task_matrix().detach().double()
    # closed form via SVD: (W^T W)^{1/2} = V S V^T
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = vh.T @ torch.diag(s) @ vh
    expected = root / root.trace()
    assert torch.allclose(closed_form_omega(w), expected, atol=1e-8)
    pen = m.penalty()
    assert torch.allclose(m.omega.double(), expected, atol=1e-5)
    assert pen is not None
    # at the closed-form Omega, tr(W Omega^{-1} W^T) = (tr (W^T W)^{1/2})^2
    assert torch.allclose(pen.double(), 0.1 * root.trace() ** 2, rtol=1e-4)


def test_distillation_penalty_pulls_both_ways() -> None:
    torch.manual_seed(0)
    m = DistillationModel(lambda: (MLPTrunk([12], [8]), 8), TASKS, strength=1.0)
    x, _ = synthetic(16)
    m(x)
    pen = m.penalty()
    assert pen is not None and float(pen.detach()) > 0
    teacher = list(m.teacher_trunk.parameters())
    student = list(m.students["digit"].parameters())
    gt = torch.autograd.grad(pen, teacher + student, allow_unused=True)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in gt)
    with torch.no_grad():
        m(x)
    assert m.penalty() is None  # evaluation passes leave nothing behind


def test_dselect_k_gate_is_a_distribution_and_smooth_step_bounds() -> None:
    t = torch.linspace(-2, 2, 41)
    s = smooth_step(t, 1.0)
    assert float(s.min()) == 0.0 and float(s.max()) == 1.0 and bool((s[1:] >= s[:-1]).all())
    gate = DSelectKGate(6, num_experts=5, k=2)
    w = gate(torch.randn(7, 6))
    assert w.shape == (7, 5) and torch.allclose(w.sum(1), torch.ones(7)) and bool((w >= 0).all())


def test_ltb_branching_readout() -> None:
    m = LTBModel([12], [8, 8, 8], [2, 3], TASKS)
    with torch.no_grad():
        m.last_logits["digit"][2] = 5.0
        m.inner_logits[1][2, 1] = 5.0
    assert m.branching()["digit"] == [1, 2]
    with pytest.raises(ValueError, match="branches"):
        LTBModel([12], [8, 8], [2, 3], TASKS)


@pytest.mark.parametrize("kernel, length", [(2, 40), (2, 41), (3, 20), (2, 2)])
def test_window_max_pool_is_max_pool1d(kernel: int, length: int) -> None:
    # small integers after a ReLU: many ties (zeros and repeats), where the gradient must go to the first maximum
    x = torch.relu(torch.randint(-3, 4, (5, 3, length)).float()).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = WindowMaxPool1d(kernel)(x), torch.nn.MaxPool1d(kernel)(x_ref)
    assert torch.equal(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)


def test_window_max_pool_refuses_what_max_pool1d_refuses() -> None:
    with pytest.raises(RuntimeError):
        torch.nn.MaxPool1d(2)(torch.zeros(2, 3, 1))
    with pytest.raises(RuntimeError):
        WindowMaxPool1d(2)(torch.zeros(2, 3, 1))
