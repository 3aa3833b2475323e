"""Properties shared by every registered balancer (parametrised over the config registry)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl import registry
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers import BalanceInput
from fedmtl.mtl.factory import build_balancer
from fedmtl.tree import flatten, unflatten

#: every registered balancer's config model: a new balancer is picked up here without editing this file
BALANCERS = [c.config_model for c in registry.components('balancer')]

TASKS = ["a", "b", "c"]


def configs() -> list[object]:
    out = []
    for cls in BALANCERS:
        out.append(cls(weights={"a": 2.0}) if cls is mtl_cfg.StaticWeighting else cls())
    return out


ALL = configs()
IDS = [c.name for c in ALL]  # type: ignore[attr-defined]


def step_inputs(seed: int, p: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, generator=g) + 0.1, torch.randn(3, p, generator=g)


def call(b, state, seed, step=0):  # type: ignore[no-untyped-def]
    losses, grads = step_inputs(seed)
    return b(BalanceInput(losses, grads if b.requires == "shared_grads" else None, step, torch.Generator().manual_seed(seed)), state)


def test_every_config_name_is_registered() -> None:
    names = {c.name for c in ALL}  # type: ignore[attr-defined]
    assert len(names) == len(ALL) == 27


@pytest.mark.parametrize("cfg", ALL, ids=IDS)
def test_shapes_and_finite(cfg) -> None:  # type: ignore[no-untyped-def]
    b = build_balancer(cfg, TASKS)
    state = b.init(3)
    for step in range(4):
        bal, state = call(b, state, step, step)
        assert bal.weights.shape == (3,) and torch.isfinite(bal.weights).all()
        if bal.shared_weights is not None:
            assert bal.shared_weights.shape == (3,) and torch.isfinite(bal.shared_weights).all()
        if bal.shared_direction is not None:
            assert bal.shared_direction.shape == (9,) and torch.isfinite(bal.shared_direction).all()


@pytest.mark.parametrize("cfg", ALL, ids=IDS)
def test_state_round_trips_through_flat_tensor_tree(cfg) -> None:  # type: ignore[no-untyped-def]
    b = build_balancer(cfg, TASKS)
    state = b.init(3)
    for step in range(3):
        _, state = call(b, state, step, step)
    restored = unflatten({k: v.clone() for k, v in flatten(state).items()})
    a, sa = call(b, state, 7, 3)
    r, sr = call(b, restored, 7, 3)
    assert torch.allclose(a.weights, r.weights)
    for x, y in ((a.shared_weights, r.shared_weights), (a.shared_direction, r.shared_direction)):
        assert (x is None) == (y is None) and (x is None or torch.allclose(x, y))
    assert flatten(sa).keys() == flatten(sr).keys()


@pytest.mark.parametrize("cfg", ALL, ids=IDS)
def test_never_touches_grad_nor_mutates_inputs(cfg) -> None:  # type: ignore[no-untyped-def]
    b = build_balancer(cfg, TASKS)
    param = torch.nn.Parameter(torch.randn(9))
    losses, grads = step_inputs(0)
    losses.requires_grad_(False)
    lc, gc = losses.clone(), grads.clone()
    state = b.init(3)
    before = {k: v.clone() for k, v in flatten(state).items()}
    b(BalanceInput(losses, grads if b.requires == "shared_grads" else None, 0, torch.Generator().manual_seed(0)), state)
    assert param.grad is None
    assert torch.equal(losses, lc) and torch.equal(grads, gc)
    after = flatten(state)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0))
def test_gradient_methods_are_descent_directions_for_the_mean(seed: int, scale: float) -> None:
    """MGDA, UPGrad, DualProj, ConFIG and CAGrad never increase any task loss to first order when
    the gradients are linearly independent (MGDA/UPGrad/DualProj/ConFIG: <g_t, d> >= 0)."""
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 9, generator=g) * scale
    losses = torch.ones(3)
    for name in ("mgda", "upgrad", "dualproj", "config"):
        cfg = next(c for c in ALL if c.name == name)  # type: ignore[attr-defined]
        b = build_balancer(cfg, TASKS)
        bal, _ = b(BalanceInput(losses, grads, 0), b.init(3))
        d = bal.shared_direction if bal.shared_direction is not None else bal.shared_weights @ grads  # type: ignore[operator]
        assert (grads @ d >= -1e-4 * scale**2).all(), name


RANDOM_ORDER = {"rlw", "pcgrad", "gradvac", "graddrop", "static"}


@pytest.mark.parametrize("cfg", [c for c in ALL if c.name not in RANDOM_ORDER], ids=[c.name for c in ALL if c.name not in RANDOM_ORDER])  # type: ignore[attr-defined]
def test_permutation_equivariance(cfg) -> None:  # type: ignore[no-untyped-def]
    """Relabelling the tasks permutes the weights and leaves the shared update unchanged."""
    b = build_balancer(cfg, TASKS)
    losses, grads = step_inputs(11)
    perm = torch.tensor([2, 0, 1])
    need = b.requires == "shared_grads"
    a, _ = b(BalanceInput(losses, grads if need else None, 0), b.init(3))
    p, _ = b(BalanceInput(losses[perm], grads[perm] if need else None, 0), b.init(3))
    assert torch.allclose(a.weights[perm], p.weights, atol=1e-5)

    def update(bal, g):  # type: ignore[no-untyped-def]
        if bal.shared_direction is not None:
            return bal.shared_direction
        return (bal.shared_weights if bal.shared_weights is not None else bal.weights) @ g

    if need:
        assert torch.allclose(update(a, grads), update(p, grads[perm]), atol=1e-4)
