"""The training step: gradients equal their definitions; vectorised Jacobian; representation mode; config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedmtl import registry
from fedmtl.config import model as model_cfg
from fedmtl.config.mtl import MTLConfig
from fedmtl.mtl import MultiTaskObjective, build_model, build_objective
from fedmtl.mtl.balancers import MGDA, MGDAUB, MoCo, PCGrad, StaticWeighting
from fedmtl.mtl.objective import jacobian
from fedmtl.tree import flatten

from .conftest import TASKS, synthetic

#: every registered balancer's config model: a new balancer is picked up here without editing this file
BALANCERS = [c.config_model for c in registry.components('balancer')]

NAMES = [t.name for t in TASKS]


def setup(cfg=None):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = build_model(cfg or model_cfg.HardSharing(trunk=model_cfg.MLPTrunk(hidden=[16, 16]), head_hidden=[8]), [12], TASKS)
    x, y = synthetic(32)
    return m, x, y


def losses(m, x, y):  # type: ignore[no-untyped-def]
    p = m(x)
    return {t: m.tasks[t].loss(p[t], y[t]) for t in NAMES}


def grads(m):  # type: ignore[no-untyped-def]
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_batched_jacobian_equals_loop() -> None:
    m, x, y = setup()
    lv = torch.stack(list(losses(m, x, y).values()))
    ps = list(m.parameters())
    a = jacobian(lv, ps, "batched", retain_graph=True)
    b = jacobian(lv, ps, "loop")
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))


def test_static_weights_equal_manual_backward() -> None:
    m, x, y = setup()
    obj = MultiTaskObjective(StaticWeighting([1.0, 0.5, 2.0]), NAMES)
    obj.backward(m, losses(m, x, y), obj.init())
    got = grads(m)
    m.zero_grad(set_to_none=True)
    L = losses(m, x, y)
    (L["digit"] + 0.5 * L["parity"] + 2.0 * L["value"]).backward()
    want = grads(m)
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)


@pytest.mark.parametrize("source", ["parameters", "representation"])
def test_gradient_balancer_shared_grad_is_combination(source: str) -> None:
    m, x, y = setup()
    obj = MultiTaskObjective(MGDA(), NAMES, grad_source=source)  # type: ignore[arg-type]
    obj.backward(m, losses(m, x, y), obj.init())
    got = grads(m)
    # recompute: weights from the balancer on the same gradients; shared = sum s_t g_t, heads = own gradient
    m.zero_grad(set_to_none=True)
    L = losses(m, x, y)
    shared = m.shared_parameters()
    if source == "parameters":
        g = torch.cat([j.reshape(3, -1) for j in jacobian(torch.stack(list(L.values())), shared, retain_graph=True)], 1)
    else:
        z = m.shared_representation()
        g = jacobian(torch.stack(list(L.values())), [z], retain_graph=True)[0].reshape(3, -1)
    bal, _ = MGDA()(__import__("fedmtl.mtl.balancers", fromlist=["BalanceInput"]).BalanceInput(torch.stack(list(L.values())).detach(), g, 0), {})
    total = sum(L.values())
    total.backward(retain_graph=True)
    heads = grads(m)
    m.zero_grad(set_to_none=True)
    (bal.shared_weights @ torch.stack(list(L.values()))).backward()
    for n, p in m.named_parameters():
        want = p.grad if m.group_of(n) == "shared" else heads[n]
        assert torch.allclose(got[n], want, atol=1e-5), n


def test_penalty_is_added() -> None:
    m, x, y = setup(model_cfg.MTRL(trunk=model_cfg.MLPTrunk(hidden=[16]), strength=0.5))
    obj = build_objective(MTLConfig(), NAMES)
    _, log = obj.backward(m, losses(m, x, y), obj.init())
    got = grads(m)
    m.zero_grad(set_to_none=True)
    (sum(losses(m, x, y).values()) + m.penalty()).backward()
    want = grads(m)
    assert log["penalty"] > 0 and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_client_with_task_subset() -> None:
    m, x, y = setup()
    obj = build_objective(MTLConfig.model_validate({"balancer": {"name": "pcgrad"}}), ["parity", "value"])
    state = obj.init()
    p = m(x, ["parity", "value"])
    state, log = obj.backward(m, {t: m.tasks[t].loss(p[t], y[t]) for t in p}, state)
    assert all(q.grad is None or float(q.grad.abs().sum()) == 0 for q in m.heads["digit"].parameters())
    assert set(k for k in log if k.startswith("weight/")) == {"weight/parity", "weight/value"}
    assert all(isinstance(v, torch.Tensor) for v in flatten(state).values())


def test_representation_mode_validation() -> None:
    with pytest.raises(ValueError, match="grad_source='parameters'"):
        MultiTaskObjective(MoCo(), NAMES, grad_source="representation")
    m, x, y = setup(model_cfg.MMoE())
    obj = MultiTaskObjective(MGDAUB(), NAMES)
    with pytest.raises(ValueError, match="no single shared representation"):
        obj.backward(m, losses(m, x, y), obj.init())


def test_missing_loss_is_an_error() -> None:
    m, x, y = setup()
    obj = MultiTaskObjective(PCGrad(), NAMES)
    with pytest.raises(KeyError, match="value"):
        obj.backward(m, {"digit": torch.zeros(()), "parity": torch.zeros(())}, obj.init())


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"balancer": {"name": "pcgrd"}}, "pcgrad"),
        ({"balancer": {"name": "cagrad", "c": -1}}, "greater than or equal"),
        ({"balancer": {"name": "dwa", "temperature": 0}}, "temperature"),
        ({"scheme": {"name": "alternating", "every": "batch"}}, "'step' or 'epoch'"),
        ({"scheme": {"name": "lagrangian", "main": "a", "constraints": {"a": 1.0}}}, "cannot also be"),
        ({"scheme": {"name": "alternating"}, "balancer": {"name": "pcgrad"}}, "weighted_sum"),
        ({"gradients": {"source": "rep"}}, "representation"),
    ],
)
def test_config_validation_messages(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MTLConfig.model_validate(raw)


def test_model_config_validation_messages() -> None:
    from pydantic import TypeAdapter

    ta = TypeAdapter(model_cfg.Architecture)
    with pytest.raises(ValidationError, match="num_experts"):
        ta.validate_python({"name": "dselect_k", "num_experts": 2, "k": 3})
    with pytest.raises(ValidationError, match="branches"):
        ta.validate_python({"name": "ltb", "hidden": [8, 8], "branches": [1, 2]})
    with pytest.raises(ValidationError, match="mmoe"):
        ta.validate_python({"name": "mmo"})
    assert ta.validate_python({"name": "ple", "levels": 3}).levels == 3


def _all_balancer_configs() -> list[tuple[str, dict]]:
    out = []
    for cls in BALANCERS:
        name = cls.model_fields["name"].default
        extra = {"weights": {"digit": 2.0}} if name == "static" else {}
        out.append((f"{name}/parameters", {"balancer": {"name": name, **extra}}))
    reps = ["pcgrad", "gradvac", "graddrop", "cagrad", "imtl", "nash_mtl", "upgrad", "config", "gradnorm", "fairgrad"]
    out += [(f"{n}/representation", {"balancer": {"name": n}, "gradients": {"source": "representation"}}) for n in reps]
    return out


@pytest.mark.parametrize("label, raw", _all_balancer_configs(), ids=[c[0] for c in _all_balancer_configs()])
def test_every_balancer_trains_hard_sharing(label: str, raw: dict) -> None:
    """Every balancer, as the objective of a (client) training loop: losses fall, state stays a tensor tree."""
    m, _, _ = setup()
    x, y = synthetic(128)
    obj = build_objective(MTLConfig.model_validate(raw), NAMES)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    state = obj.init()
    with torch.no_grad():
        start = sum(float(v) for v in losses(m, x, y).values())
    gen = torch.Generator().manual_seed(0)
    for step in range(40):
        opt.zero_grad(set_to_none=True)
        state, log = obj.backward(m, losses(m, x, y), state, generator=gen, epoch=step // 10)
        opt.step()
    with torch.no_grad():
        end = sum(float(v) for v in losses(m, x, y).values())
    assert end < 0.8 * start, (label, start, end)
    assert all(isinstance(v, torch.Tensor) for v in flatten(state).values())
    assert all(isinstance(v, float) for v in log.values())


@pytest.mark.parametrize("label, raw", _all_balancer_configs()[: len(BALANCERS)], ids=[c[0] for c in _all_balancer_configs()[: len(BALANCERS)]])
def test_every_balancer_on_a_single_task_client(label: str, raw: dict) -> None:
    """A federated client holding one task: every balancer degenerates gracefully (finite, weight defined)."""
    if "static" in label:
        raw = {"balancer": {"name": "static", "weights": {"parity": 2.0}}}
    m, x, y = setup()
    obj = build_objective(MTLConfig.model_validate(raw), ["parity"])
    state = obj.init()
    for step in range(3):
        m.zero_grad(set_to_none=True)
        p = m(x, ["parity"])
        state, log = obj.backward(m, {"parity": m.tasks["parity"].loss(p["parity"], y["parity"])}, state, generator=torch.Generator().manual_seed(step))
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)
    assert all(q.grad is None for q in m.heads["digit"].parameters())
    assert torch.isfinite(torch.tensor(log["weight/parity"]))
