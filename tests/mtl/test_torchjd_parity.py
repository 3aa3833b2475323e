"""Parity with TorchJD (the ``dev`` extra): every method both libraries implement, on random conflicting
matrices, compared by direction (cosine >= 0.999) and by norm after each library's scale convention
(the conventions are listed in docs/mtl.md)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

A = pytest.importorskip("torchjd.aggregation")

from fedmtl.mtl import balancers as B  # noqa: E402
from fedmtl.mtl.balancers import BalanceInput  # noqa: E402
from fedmtl.mtl.balancers.pcgrad import pcgrad_coefficients  # noqa: E402

SIZES = [(t, seed) for t in (2, 3, 5) for seed in range(4)]


def conflicting(t: int, seed: int) -> torch.Tensor:
    """Random ``[t, 12]`` task gradients with at least one conflicting pair (the first against the second)."""
    g = torch.randn(t, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g[0] -= 1.5 * g[1]
    assert float(g[0] @ g[1]) < 0
    return g


def ours(balancer, g: torch.Tensor, state=None, step: int = 0):  # type: ignore[no-untyped-def]
    state = balancer.init(g.shape[0]) if state is None else state
    bal, state = balancer(BalanceInput(torch.ones(g.shape[0], dtype=g.dtype), g, step), state)
    return bal.shared_gradient(g), state


def theirs(make: Callable[[], object]) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return make()  # type: ignore[return-value]
    except ImportError as e:  # an optional solver of TorchJD's (cvxpy, clarabel, ecos, quadprog)
        pytest.skip(f"TorchJD's solver is not installed: {e}")


def assert_same(d_ours: torch.Tensor, d_theirs: torch.Tensor, scale: float = 1.0) -> None:
    """Same direction (cos >= 0.999) and ``d_theirs = scale * d_ours`` in norm (0.1 %)."""
    cos = float(d_ours @ d_theirs / (d_ours.norm() * d_theirs.norm()))
    assert cos >= 0.999, cos
    assert float(d_theirs.norm()) == pytest.approx(scale * float(d_ours.norm()), rel=1e-3)


def pref(t: int) -> list[float]:
    return np.linspace(0.5, 2.0, t).tolist()


# name -> (fedmtl balancer for T tasks, TorchJD aggregator for T tasks, TorchJD's norm / fedmtl's norm)
STATELESS: dict[str, tuple[Callable[[int], object], Callable[[int], object], Callable[[int], float]]] = {
    "upgrad": (lambda t: B.UPGrad(), lambda t: A.UPGrad(), lambda t: 1.0),
    "upgrad+pref": (lambda t: B.UPGrad(pref(t)), lambda t: A.UPGrad(pref_vector=torch.tensor(pref(t))), lambda t: 1.0),
    "dualproj": (lambda t: B.DualProj(), lambda t: A.DualProj(), lambda t: 1.0),
    "dualproj+pref": (lambda t: B.DualProj(pref(t)), lambda t: A.DualProj(pref_vector=torch.tensor(pref(t))), lambda t: 1.0),
    # TorchJD's default stopping tolerance (1e-3) is loose; ours is exact: compare with TorchJD at a tight one
    "mgda": (lambda t: B.MGDA(), lambda t: A.MGDA(epsilon=1e-9, max_iters=30_000), lambda t: 1.0),
    "imtl": (lambda t: B.IMTL(), lambda t: A.IMTLG(), lambda t: 1.0),
    # fedmtl divides the paper's direction by 1 + c^2 (the authors' code); TorchJD does not
    "cagrad": (lambda t: B.CAGrad(c=0.5), lambda t: A.CAGrad(c=0.5, norm_eps=0.0), lambda t: 1.25),
    # TorchJD clips the direction to max_norm (default 1); without clipping the two are the paper's direction
    "nash_mtl": (lambda t: B.NashMTL(), lambda t: A.NashMTL(n_tasks=t, max_norm=0.0, optim_niter=100), lambda t: 1.0),
    # TorchJD weights the aligned rows by its preference vector (default: the mean); fedmtl sums them
    "aligned_mtl": (lambda t: B.AlignedMTL(), lambda t: A.AlignedMTL(), lambda t: 1.0 / t),
    "config": (lambda t: B.ConFIG(), lambda t: A.ConFIG(), lambda t: 1.0),
    "fairgrad": (lambda t: B.FairGrad(alpha=2.0), lambda t: A.FairGrad(alpha=2.0), lambda t: 1.0),
}


@pytest.mark.parametrize("t, seed", SIZES)
@pytest.mark.parametrize("name", list(STATELESS))
def test_stateless_methods_agree(name: str, t: int, seed: int) -> None:
    make_ours, make_theirs, scale = STATELESS[name]
    g = conflicting(t, seed)
    agg = theirs(lambda: make_theirs(t))
    assert_same(ours(make_ours(t), g)[0], agg(g), scale(t))


@pytest.mark.parametrize("t, seed", SIZES)
def test_pcgrad_agrees_for_torchjds_projection_orders(t: int, seed: int) -> None:
    # TorchJD draws one torch.randperm(T) per task from the global generator; replay the same orders
    g = conflicting(t, seed)
    torch.manual_seed(seed)
    d_theirs = A.PCGrad()(g)
    torch.manual_seed(seed)
    orders = [torch.randperm(t).tolist() for _ in range(t)]
    assert_same(pcgrad_coefficients(g @ g.T, orders).sum(0) @ g, d_theirs)


@pytest.mark.parametrize("seed", range(4))
def test_gradvac_agrees_on_two_tasks_over_steps(seed: int) -> None:
    # with two tasks the projection order plays no part; the cosine targets evolve in the state
    ours_b, agg, state = B.GradVac(beta=0.5), A.GradVac(beta=0.5), None
    for step in range(4):
        g = conflicting(2, 10 * seed + step)
        d, state = ours(ours_b, g, state, step)
        assert_same(d, agg(g))


def test_modo_agrees_over_steps() -> None:
    # TorchJD's MoDoWeighting takes G1 G2^T; with one minibatch both factors are G
    w_theirs, b, state = A.MoDoWeighting(gamma=0.05, rho=0.1), B.MoDo(gamma=0.05, rho=0.1), None
    for step in range(5):
        g = conflicting(3, step)
        d, state = ours(b, g, state, step)
        assert_same(d, w_theirs(g @ g.T) @ g)


@pytest.mark.parametrize("t, seed", SIZES)
def test_sdmgrad_agrees_with_torchjds_solver_run_to_convergence(t: int, seed: int) -> None:
    # fedmtl solves SDMGrad's subproblem exactly; TorchJD iterates (lr 10, momentum 0.5, 20 steps by
    # default): with small steps and many of them its iterate reaches the same minimiser
    g = conflicting(t, seed)
    w = A.SDMGradWeighting(lr=0.2, momentum=0.0, n_iter=3_000, lambda_=0.3)
    assert_same(ours(B.SDMGrad(lam=0.3), g)[0], w(g @ g.T) @ g)
