"""CAGrad's dual solved exactly: optimality conditions, zero duality gap, agreement with exact solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fedmtl.mtl import balancers as B
from fedmtl.mtl.balancers import BalanceInput
from fedmtl.mtl.balancers.cagrad import cagrad_dual, cagrad_weights


def conflicting(seed: int, t: int, p: int = 7) -> np.ndarray:
    """Random task gradients, the first pushed against the second (strong conflicts)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(t, p))
    g[0] -= 2 * rng.random() * g[1]
    return g


def dual(g: np.ndarray, c: float, w: np.ndarray) -> float:
    """The paper's dual objective ``g_w^T g0 + c ||g0|| ||g_w||``."""
    g0 = g.mean(0)
    gw = w @ g
    return float(gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw))


CASES = [(seed, t, c) for t in (2, 3, 4, 6, 9) for seed in range(6) for c in (0.2, 0.5, 1.3)]


def test_issue_example_exact_direction() -> None:
    # c = 0.5, rows = tasks. The paper's direction d = g0 + c ||g0|| g_w / ||g_w|| gives G d = [0.091, 0.091, 0.333]
    # (the two conflicting tasks improve equally); the balancer returns d / (1 + c^2) as the authors' code.
    g = np.array([[1.0, 0.0, 0.0], [-0.9, 0.5, 0.0], [0.0, 0.0, 1.0]])
    paper = cagrad_weights(g @ g.T, 0.5, rescale=False) @ g
    assert np.allclose(g @ paper, [0.0907187, 0.0907187, 1 / 3], atol=1e-6)
    gt = torch.tensor(g, dtype=torch.float64)
    bal, _ = B.CAGrad(c=0.5)(BalanceInput(torch.ones(3, dtype=torch.float64), gt, 0), {})
    assert torch.allclose(bal.shared_weights @ gt, torch.tensor(paper / 1.25), atol=1e-9)


@pytest.mark.parametrize("seed, t, c", CASES)
def test_kkt_conditions_and_zero_duality_gap(seed: int, t: int, c: float) -> None:
    g = conflicting(seed, t)
    m = g @ g.T
    w = cagrad_dual(m, c)
    assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
    g0 = g.mean(0)
    r = c * np.linalg.norm(g0)
    gw = w @ g
    grad = g @ g0 + r * (g @ gw) / np.linalg.norm(gw)  # dF/dw
    mu = float(w @ grad)
    scale = np.abs(grad).max()
    on = w > 1e-9
    assert np.allclose(grad[on], mu, atol=1e-8 * scale)  # stationary on the support
    assert (grad[~on] >= mu - 1e-8 * scale).all()  # no task outside it would lower F
    # strong duality: the primal direction (in the ball around g0) guarantees every task exactly F(w*)
    d = cagrad_weights(m, c, rescale=False) @ g
    assert np.isclose(np.linalg.norm(d - g0), r)
    assert np.isclose((g @ d).min(), dual(g, c, w), atol=1e-10 * scale)


@pytest.mark.parametrize("seed, t, c", CASES[::3])
def test_agrees_with_a_general_purpose_solver(seed: int, t: int, c: float) -> None:
    g = conflicting(seed, t)
    w = cagrad_dual(g @ g.T, c)
    starts = [np.full(t, 1 / t), *np.eye(t)]
    cons = [{"type": "eq", "fun": lambda v: v.sum() - 1}]
    ref = min(
        minimize(lambda v: dual(g, c, v), x0, method="SLSQP", bounds=[(0, 1)] * t, constraints=cons, options={"ftol": 1e-14, "maxiter": 500}).fun
        for x0 in starts
    )
    assert dual(g, c, w) <= ref + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_three_tasks_against_a_fine_grid(seed: int) -> None:
    g = conflicting(seed, 3)
    n = 400
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    grid = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], 1) / n
    g0 = g.mean(0)
    gw = grid @ g
    values = gw @ g0 + 0.5 * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    best = dual(g, 0.5, cagrad_dual(g @ g.T, 0.5))
    assert best <= values.min() + 1e-12
    assert best >= values.min() - 1e-2 * np.abs(values).max()  # the grid's resolution


def test_many_tasks_meet_the_optimality_conditions() -> None:
    for t in (15, 40):
        g = np.random.default_rng(t).normal(size=(t, 60))
        w = cagrad_dual(g @ g.T, 0.5)
        d = cagrad_weights(g @ g.T, 0.5, rescale=False) @ g
        assert np.isclose((g @ d).min(), dual(g, 0.5, w))


@pytest.mark.parametrize("t, p", [(8, 2), (30, 3), (40, 20)])
def test_more_tasks_than_dimensions(t: int, p: int) -> None:
    # rank-deficient Gramians (affinely dependent faces, zero often inside the hull): still zero duality gap
    rng = np.random.default_rng(t)
    for _ in range(5):
        g = rng.normal(size=(t, p)) + rng.choice([-1, 1], size=(t, 1)) * rng.normal(size=(1, p)) * rng.uniform(0, 3)
        for c in (0.1, 0.5, 1.0):
            w = cagrad_dual(g @ g.T, c)
            d = cagrad_weights(g @ g.T, c, rescale=False) @ g
            assert (g @ d).min() == pytest.approx(dual(g, c, w), abs=1e-10 * np.abs(g @ g.T).max())


@pytest.mark.parametrize(
    "rows, w_expected",
    [
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [0.25] * 4),  # ties: symmetric answer
        ([[1, 0], [1, 0], [0, 1]], None),  # duplicated task (affinely dependent faces)
        ([[1, 0], [-1, 0]], [0.5, 0.5]),  # g0 = 0: the ball is a point
    ],
)
def test_degenerate_inputs(rows: list[list[float]], w_expected: list[float] | None) -> None:
    g = np.array(rows, dtype=float)
    w = cagrad_dual(g @ g.T, 0.5)
    if w_expected is not None:
        assert np.allclose(w, w_expected)
    d = cagrad_weights(g @ g.T, 0.5, rescale=False) @ g
    assert np.isfinite(d).all()
    if np.linalg.norm(g.mean(0)) > 0:
        assert np.isclose((g @ d).min(), dual(g, 0.5, w))


def test_zero_gradient_task_leaves_the_mean_gradient() -> None:
    # a task with zero gradient makes 0 the best worst-case improvement; d = g0 attains it
    g = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    d = cagrad_weights(g @ g.T, 0.5, rescale=False) @ g
    assert np.allclose(d, g.mean(0)) and (g @ d).min() == 0
