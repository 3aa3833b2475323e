"""fedmtl.mtl.backward on plain nn.Modules, against gradients computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedmtl import mtl
from fedmtl.mtl import balancers as B
from fedmtl.tree import flatten


class Net(nn.Module):
    """A plain module: a trunk and two heads (no MultiTaskModel, no Task objects)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.tanh(self.trunk(x))
        return {"a": self.a(z).pow(2).mean(), "b": self.b(z).sum(1).sin().mean()}


def net_and_batch() -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    return Net(), torch.randn(6, 3)


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def test_equal_weighting_is_the_plain_sum_backward() -> None:
    net, x = net_and_batch()
    ref = copy.deepcopy(net)
    sum(ref(x).values()).backward()  # type: ignore[union-attr]
    state = mtl.backward(net(x), shared=net.trunk.parameters(), balancer="equal")
    for (n, g), (_, r) in zip(grads(net).items(), grads(ref).items()):
        assert g is not None and r is not None and torch.allclose(g, r, atol=1e-7), n
    assert int(state["step"]) == 1


class Bilinear(nn.Module):
    """L1 = a <theta, g1>, L2 = b <theta, g2> with g1 = (1, 0), g2 = (-1, 1): conflicting (cos = -1/sqrt 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(1.0))

    def forward(self) -> list[torch.Tensor]:
        return [self.a * (self.theta @ torch.tensor([1.0, 0.0])), self.b * (self.theta @ torch.tensor([-1.0, 1.0]))]


def test_pcgrad_two_tasks_by_hand() -> None:
    # shared: g1' = g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5); g2' = g2 - <g2,g1>/|g1|^2 g1 = (0, 1); sum (0.5, 1.5).
    # heads get their own loss's gradient: dL1/da = <theta, g1> = 1, dL2/db = <theta, g2> = 1.
    m = Bilinear()
    state = mtl.backward(m(), shared=[m.theta], balancer="pcgrad", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(m.theta.grad, torch.tensor([0.5, 1.5]))  # type: ignore[arg-type]
    assert float(m.a.grad) == 1.0 and float(m.b.grad) == 1.0  # type: ignore[arg-type]
    assert state["balancer"] == {}


def test_accumulates_like_tensor_backward() -> None:
    m = Bilinear()
    mtl.backward(m(), shared=[m.theta], balancer="equal")
    mtl.backward(m(), shared=[m.theta], balancer="equal")
    assert torch.allclose(m.theta.grad, 2 * torch.tensor([0.0, 1.0]))  # type: ignore[arg-type]


def test_name_config_and_object_agree() -> None:
    out = []
    for spec in ({"name": "cagrad", "c": 0.5}, B.CAGrad(c=0.5)):
        m = Bilinear()
        mtl.backward(m(), shared=[m.theta], balancer=spec)
        out.append(m.theta.grad.clone())  # type: ignore[union-attr]
    assert torch.allclose(out[0], out[1])
    m = Bilinear()
    mtl.backward(m(), shared=[m.theta], balancer="cagrad")  # default c = 0.4
    assert not torch.allclose(m.theta.grad, out[0])  # type: ignore[arg-type]


def test_loss_weighting_weights_every_parameter() -> None:
    # uncertainty weighting starts at w = 1 / (2 e^0) = 0.5 for every task, on heads and trunk alike
    net, x = net_and_batch()
    ref = copy.deepcopy(net)
    (0.5 * sum(ref(x).values())).backward()  # type: ignore[union-attr]
    mtl.backward(net(x), shared=net.trunk.parameters(), balancer="uw")
    for (n, g), (_, r) in zip(grads(net).items(), grads(ref).items()):
        assert torch.allclose(g, r, atol=1e-7), n  # type: ignore[arg-type]


def test_missing_task_is_left_out_and_its_state_kept() -> None:
    torch.manual_seed(1)
    trunk = nn.Linear(3, 5)
    heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(3))
    x = torch.randn(8, 3)

    def losses(skip: int | None) -> dict[str, torch.Tensor | None]:
        z = torch.tanh(trunk(x))
        return {f"t{i}": None if i == skip else heads[i](z).pow(2).mean() for i in range(3)}

    state = mtl.backward(losses(None), shared=trunk.parameters(), balancer="nash_mtl")
    before = state["balancer"]["alpha"].clone()
    for p in [*trunk.parameters(), *heads.parameters()]:
        p.grad = None
    batch = losses(1)
    # the reference: Nash-MTL on tasks 0 and 2 alone, from their entries of the state
    jac = torch.autograd.grad(batch["t0"], list(trunk.parameters()), retain_graph=True), torch.autograd.grad(
        batch["t2"], list(trunk.parameters()), retain_graph=True
    )
    g = torch.stack([torch.cat([t.reshape(-1) for t in row]) for row in jac])
    ref, ref_state = B.NashMTL()(B.BalanceInput(torch.stack([batch["t0"], batch["t2"]]).detach(), g, 1), {"alpha": before[[0, 2]]})
    state = mtl.backward(batch, shared=trunk.parameters(), balancer="nash_mtl", state=state)
    alpha = state["balancer"]["alpha"]
    assert alpha[1] == before[1] and torch.allclose(alpha[[0, 2]], ref_state["alpha"])
    flat = torch.cat([p.grad.reshape(-1) for p in trunk.parameters()])  # type: ignore[union-attr]
    assert torch.allclose(flat, ref.shared_gradient(g), atol=1e-6)
    assert all(p.grad is None for p in heads[1].parameters())
    assert int(state["step"]) == 2


@pytest.mark.parametrize("name", ["gradvac", "dwa", "db_mtl", "moco", "excess_mtl", "famo"])
def test_state_keeps_its_shape_when_tasks_come_and_go(name: str) -> None:
    torch.manual_seed(2)
    trunk = nn.Linear(3, 4)
    heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(3))
    x = torch.randn(8, 3)
    state = None
    shapes = None
    for step, skip in enumerate([None, 0, 2, None, 1]):
        z = torch.tanh(trunk(x))
        batch = [None if i == skip else heads[i](z).pow(2).mean() + 0.1 for i in range(3)]
        state = mtl.backward(batch, shared=trunk.parameters(), balancer=name, state=state, epoch=step)
        now = {k: v.shape for k, v in flatten(state).items()}
        assert shapes is None or now == shapes  # [T, 0] buffers take their width at the first step, all tasks present
        shapes = now
        assert all(torch.isfinite(v.float()).all() for v in flatten(state).values())


def test_list_losses_and_all_missing() -> None:
    m = Bilinear()
    state = mtl.backward([None, None], shared=[m.theta])
    assert m.theta.grad is None and int(state["step"]) == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: mtl.backward([m.theta * 1.0], shared=[m.theta]), "scalar"),
        (lambda m: mtl.backward([torch.tensor(1.0)], shared=[m.theta]), "does not require grad"),
        (lambda m: mtl.backward(m(), shared=[]), "shared is empty"),
        (lambda m: mtl.backward(m(), shared=[m.theta * 2]), "leaf tensors"),
        (lambda m: mtl.backward(m(), shared=[m.theta], balancer="pcgrd"), "pcgrd"),
        (lambda m: mtl.backward(m(), shared=[m.theta], balancer={"name": "cagrad", "c": -1}), "greater than or equal"),
        (lambda m: mtl.backward(m(), shared=[m.theta], balancer=42), "name, a config dict or a balancer"),  # type: ignore[arg-type]
        (lambda m: mtl.backward(m(), shared=[m.theta], balancer="mgda_ub"), "representation"),
        (lambda m: mtl.backward(m(), shared=[m.theta], balancer="nash_mtl", state={"balancer": {"alpha": torch.ones(3)}, "step": torch.tensor(0)}), "another number of tasks"),
        (lambda m: mtl.backward([m()[0], None], shared=[m.theta], balancer=B.StaticWeighting([1.0, 2.0])), "static"),
        (lambda m: mtl.backward([], shared=[m.theta]), "losses is empty"),
        (lambda m: mtl.backward(m(), shared=[m.theta], state={"alpha": torch.ones(2)}), "previous call"),
    ],
)
def test_bad_input_is_refused_with_a_message(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call(Bilinear())
