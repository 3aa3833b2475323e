"""MoDo, SDMGrad and the UPGrad / DualProj preference vector, against hand computations and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config.mtl import MTLConfig
from fedmtl.mtl import balancers as B
from fedmtl.mtl import build_objective
from fedmtl.mtl.balancers import BalanceInput
from fedmtl.mtl.balancers._solvers import min_norm_weights, project_simplex, project_to_dual_cone
from fedmtl.mtl.factory import build_balancer

G2 = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # M = [[1, -1], [-1, 2]]; MGDA's weights (0.6, 0.4)
L2 = torch.tensor([1.0, 2.0], dtype=torch.float64)


def run(balancer, grads=G2, state=None, step=0):  # type: ignore[no-untyped-def]
    state = balancer.init(grads.shape[0]) if state is None else state
    return balancer(BalanceInput(torch.ones(grads.shape[0], dtype=grads.dtype), grads, step), state)


def test_modo_first_step_by_hand() -> None:
    # lambda = (0.5, 0.5); M lambda = (0, 0.5); lambda - 0.1 (M lambda + 0.1 lambda) = (0.495, 0.445);
    # onto the simplex: + 0.03 each -> (0.525, 0.475); direction 0.525 g1 + 0.475 g2 = (0.05, 0.475)
    bal, state = run(B.MoDo(gamma=0.1, rho=0.1))
    assert torch.allclose(state["lambd"], torch.tensor([0.525, 0.475], dtype=torch.float64))
    assert torch.allclose(bal.shared_weights @ G2, torch.tensor([0.05, 0.475], dtype=torch.float64))
    assert torch.equal(bal.weights, torch.ones(2, dtype=torch.float64))


def test_modo_converges_to_mgda_without_regularisation() -> None:
    modo, state = B.MoDo(gamma=0.2, rho=0.0), None
    for step in range(300):
        bal, state = run(modo, state=state, step=step)
    assert torch.allclose(state["lambd"], torch.tensor([0.6, 0.4], dtype=torch.float64), atol=1e-6)


def test_sdmgrad_lam_zero_is_mgda_and_large_lam_the_mean() -> None:
    bal, _ = run(B.SDMGrad(lam=0.0))
    assert torch.allclose(bal.shared_weights, torch.tensor([0.6, 0.4], dtype=torch.float64))
    bal, _ = run(B.SDMGrad(lam=1e6))
    assert torch.allclose(bal.shared_weights, torch.full((2,), 0.5, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_sdmgrad_minimises_its_subproblem(seed: int) -> None:
    # w* = argmin_simplex ||g_w + lam g0||^2, checked against a fine projected-gradient run on the rows themselves
    g = np.random.default_rng(seed).normal(size=(3, 6))
    lam = 0.3
    bal, _ = run(B.SDMGrad(lam=lam), grads=torch.tensor(g))
    d = bal.shared_weights.numpy() @ g
    shifted = g + lam * g.mean(0)
    w = min_norm_weights(shifted @ shifted.T)
    assert np.allclose(d, (w @ g + lam * g.mean(0)) / (1 + lam))
    v = np.full(3, 1 / 3)
    step = 1 / np.linalg.eigvalsh(shifted @ shifted.T).max()
    for _ in range(20000):
        v = project_simplex(v - step * shifted @ (shifted.T @ v))
    assert np.linalg.norm(w @ shifted) <= np.linalg.norm(v @ shifted) + 1e-8


def test_pref_vector_default_is_the_mean() -> None:
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).double()
    for cls in (B.UPGrad, B.DualProj):
        a, _ = run(cls(), grads=g)
        b, _ = run(cls(pref_vector=[1 / 3] * 3), grads=g)
        assert torch.allclose(a.shared_weights, b.shared_weights)


def test_pref_vector_by_hand() -> None:
    # non-conflicting rows: the projections are the identity, so DualProj gives G^T p and UPGrad sum_i p_i g_i too
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    p = [2.0, 0.5]
    for cls in (B.UPGrad, B.DualProj):
        bal, _ = run(cls(pref_vector=p), grads=g)
        assert torch.allclose(bal.shared_weights, torch.tensor(p, dtype=torch.float64))
    # conflicting rows: each is its own dual-cone projection of p_i e_i, summed (UPGrad) / of p (DualProj)
    m = (G2 @ G2.T).numpy()
    up, _ = run(B.UPGrad(pref_vector=p))
    expected = project_to_dual_cone(m, np.array([2.0, 0.0])) + project_to_dual_cone(m, np.array([0.0, 0.5]))
    assert np.allclose(up.shared_weights.numpy(), expected)
    dp, _ = run(B.DualProj(pref_vector=p))
    assert np.allclose(dp.shared_weights.numpy(), project_to_dual_cone(m, np.array(p)))
    assert (G2 @ (dp.shared_weights @ G2) >= -1e-9).all()


@pytest.mark.parametrize("pref", [[-1.0, 1.0], [float("nan"), 1.0], [float("inf"), 1.0], []])
def test_pref_vector_validation(pref: list[float]) -> None:
    for cls in (B.UPGrad, B.DualProj):
        with pytest.raises(ValueError, match="pref_vector"):
            cls(pref_vector=pref)


def test_pref_vector_length_must_match_the_tasks() -> None:
    with pytest.raises(ValueError, match="pref_vector has 3 entries for 2 tasks"):
        run(B.UPGrad(pref_vector=[1.0, 1.0, 1.0]))


def test_pref_vector_config_by_task_name() -> None:
    cfg = MTLConfig.model_validate({"balancer": {"name": "upgrad", "pref_vector": {"b": 2.0, "a": 1.0}}})
    b = build_balancer(cfg.balancer, ["a", "b"])
    assert list(b.pref_vector) == [1.0, 2.0]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"no weight for tasks \['c'\]"):
        build_objective(cfg, ["a", "c"])
    for bad in ({"a": -1.0}, {"a": float("inf")}):
        with pytest.raises(ValueError, match="pref_vector"):
            MTLConfig.model_validate({"balancer": {"name": "dualproj", "pref_vector": bad}})


@pytest.mark.parametrize(
    "make, message",
    [(lambda: B.MoDo(gamma=0), "gamma"), (lambda: B.MoDo(rho=-1), "rho"), (lambda: B.SDMGrad(lam=-0.1), "lam")],
)
def test_constructor_validation(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()
