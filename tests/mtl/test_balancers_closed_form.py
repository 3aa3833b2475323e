"""Each balancer against a value computed by hand or in closed form on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmtl.mtl import balancers as B
from fedmtl.mtl.balancers import BalanceInput
from fedmtl.mtl.balancers._solvers import min_norm_weights, project_simplex, solve_power_balance
from fedmtl.mtl.balancers.pcgrad import pcgrad_coefficients, pcgrad_coefficients_batched

G2 = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # two conflicting 2-D gradients (cos = -1/sqrt 2)
L2 = torch.tensor([1.0, 2.0])


def run(balancer, grads=G2, losses=L2, step=0, state=None, epoch=0, seed=0):  # type: ignore[no-untyped-def]
    state = balancer.init(len(losses)) if state is None else state
    return balancer(BalanceInput(losses, grads, step, torch.Generator().manual_seed(seed), epoch), state)


def shared(bal, grads=G2):  # type: ignore[no-untyped-def]
    if bal.shared_direction is not None:
        return bal.shared_direction
    sw = bal.shared_weights if bal.shared_weights is not None else bal.weights
    return sw @ grads


def test_pcgrad_two_conflicting_vectors() -> None:
    g1, g2 = G2
    # by hand: g1' = g1 - <g1,g2>/|g2|^2 g2 = (1,0) + 1/2 (-1,1) = (0.5, 0.5); g2' = g2 - <g2,g1>/|g1|^2 g1 = (0, 1)
    bal, _ = run(B.PCGrad())
    assert torch.allclose(shared(bal), torch.tensor([0.5, 1.5]))
    assert torch.allclose(bal.weights, torch.ones(2))


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bal, _ = run(B.PCGrad(), grads=g)
    assert torch.allclose(shared(bal, g), g.sum(0))


def test_pcgrad_coefficients_match_direct_projection() -> None:
    g = torch.randn(4, 7, generator=torch.Generator().manual_seed(1)).double()
    orders = [[3, 1, 0, 2], [0, 2, 3], [1, 0, 3], [2, 1, 0]]
    c = pcgrad_coefficients(g @ g.T, orders)
    pc = g.clone()
    for i in range(4):
        for j in orders[i]:
            if j == i:
                continue
            dot = pc[i] @ g[j]
            if dot < 0:
                pc[i] = pc[i] - dot / (g[j] @ g[j]) * g[j]
    assert torch.allclose(c @ g, pc)


def test_pcgrad_batched_over_clients_matches_one_client_at_a_time() -> None:
    """The vectorised engine's PCGrad (every client's projections as tensor operations over the clients)
    against the one-client coefficients, and the batched balancer against the per-client call with the same
    generators (the same orders drawn)."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(6, 3, 5, generator=gen).double()
    m = g @ g.transpose(1, 2)
    orders = torch.stack([torch.stack([torch.randperm(3, generator=gen) for _ in range(3)]) for _ in range(6)])
    batched = pcgrad_coefficients_batched(m, orders)
    for b in range(6):
        assert torch.allclose(batched[b], pcgrad_coefficients(m[b], orders[b].tolist()))
    pc = B.PCGrad()
    shared_w, _ = pc.balance_batch(m, [0] * 6, [torch.Generator().manual_seed(10 + b) for b in range(6)], [{}] * 6)
    for b in range(6):
        bal, _ = pc(BalanceInput(losses=torch.ones(3), grads=g[b], step=0, generator=torch.Generator().manual_seed(10 + b)), {})
        assert torch.allclose(shared_w[b], bal.shared_weights.double())


def test_mgda_min_norm_point_of_two_vectors() -> None:
    # min over gamma of |gamma g1 + (1-gamma) g2|^2: gamma* = <g2 - g1, g2> / |g1 - g2|^2 = (2 + 1) / 5
    bal, _ = run(B.MGDA())
    gamma = 3 / 5
    expected = gamma * G2[0] + (1 - gamma) * G2[1]
    assert torch.allclose(shared(bal), expected, atol=1e-6)
    # the min-norm point of the hull is orthogonal to g1 - g2
    assert abs(float(shared(bal) @ (G2[0] - G2[1]))) < 1e-6


def test_mgda_frank_wolfe_matches_projected_gradient() -> None:
    g = np.random.default_rng(0).normal(size=(4, 6))
    m = g @ g.T
    w = min_norm_weights(m, max_iter=2000)
    v = np.full(4, 0.25)
    for _ in range(20000):
        v = project_simplex(v - 0.01 * m @ v)
    assert abs(w @ m @ w - v @ m @ v) < 1e-5


def test_mgda_ub_forces_representation() -> None:
    assert B.MGDAUB.forced_source == "representation"


def test_cagrad_c0_is_mean_gradient() -> None:
    bal, _ = run(B.CAGrad(c=0.0))
    assert torch.allclose(shared(bal), G2.mean(0))


def test_cagrad_improves_worst_task_over_mean() -> None:
    bal, _ = run(B.CAGrad(c=0.5))
    d = shared(bal)
    assert float((G2 @ d).min()) > float((G2 @ G2.mean(0)).min())


def test_dwa_weights_from_loss_history() -> None:
    dwa = B.DWA(temperature=2.0)
    state = dwa.init(2)
    history = {0: [[1.0, 1.0], [1.0, 1.0]], 1: [[0.5, 0.9], [0.5, 0.9]], 2: [[0.1, 0.1]]}
    for epoch, steps in history.items():
        for losses in steps:
            bal, state = run(dwa, None, torch.tensor(losses), state=state, epoch=epoch)
    r = torch.tensor([0.5 / 1.0, 0.9 / 1.0])
    expected = 2 * torch.softmax(r / 2.0, 0)
    assert torch.allclose(bal.weights, expected)


def test_dwa_first_two_epochs_are_uniform() -> None:
    dwa = B.DWA()
    bal, state = run(dwa, None, torch.tensor([3.0, 1.0]))
    bal, _ = run(dwa, None, torch.tensor([3.0, 1.0]), state=state, epoch=1)
    assert torch.allclose(bal.weights, torch.ones(2))


def test_uncertainty_weighting_update_is_closed_form() -> None:
    uw = B.UncertaintyWeighting(lr=0.1)
    bal, state = run(uw, None, torch.tensor([4.0, 1.0]))
    assert torch.allclose(bal.weights, torch.full((2,), 0.5))
    assert torch.allclose(state["log_var"], -0.1 * 0.5 * (1 - torch.tensor([4.0, 1.0])))


def test_gls_weights_give_geometric_mean_gradient() -> None:
    loss = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
    gm = loss.prod() ** (1 / 3)
    (auto,) = torch.autograd.grad(gm, loss)
    bal, _ = run(B.GLS(), None, loss.detach())
    assert torch.allclose(bal.weights, auto)


def test_imtl_equal_projections_on_unit_gradients() -> None:
    g = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 2.0, 0.0], [0.3, 0.2, 1.5]])
    bal, _ = run(B.IMTL(), grads=g, losses=torch.ones(3))
    d = shared(bal, g)
    proj = (g / g.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(proj, proj[0].expand(3), atol=1e-5)
    assert math.isclose(float(bal.shared_weights.sum()), 1.0, rel_tol=1e-5)


def test_nash_mtl_bargaining_condition() -> None:
    bal, _ = run(B.NashMTL())
    m = (G2 @ G2.T).double()
    a = bal.shared_weights.double()
    assert torch.allclose(m @ a, 1 / a, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_nash_mtl_identity_gradients_give_the_papers_direction(scale: float) -> None:
    # G = k I: alpha = 1/k, d = G^T alpha = [1, 1] whatever k (the normalised system must be undone)
    g = scale * torch.eye(2)
    bal, _ = run(B.NashMTL(), grads=g)
    assert torch.allclose(shared(bal, g), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_two_task_closed_form(seed: int) -> None:
    # alpha_1^2 (|g1|^2 + <g1,g2> alpha_2/alpha_1) = 1 and |g1| alpha_1 = |g2| alpha_2 give
    # alpha_t = 1 / (|g_t| sqrt(1 + cos)), d = (g1/|g1| + g2/|g2|) / sqrt(1 + cos)
    g = torch.randn(2, 5, generator=torch.Generator().manual_seed(seed)).double() * (seed + 0.5)
    n = g.norm(dim=1)
    cos = (g[0] @ g[1]) / (n[0] * n[1])
    bal, _ = run(B.NashMTL(), grads=g, losses=torch.ones(2, dtype=torch.float64))
    assert torch.allclose(bal.shared_weights, 1 / (n * torch.sqrt(1 + cos)), rtol=1e-6)


def test_nash_mtl_direction_is_invariant_to_a_common_scaling() -> None:
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(3)).double() + 0.3
    ones = torch.ones(3, dtype=torch.float64)
    d1 = shared(run(B.NashMTL(), grads=g, losses=ones)[0], g)
    for k in (1e-3, 1e3):
        dk = shared(run(B.NashMTL(), grads=k * g, losses=ones)[0], k * g)
        assert torch.allclose(dk, d1, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_alpha_fair_condition(alpha: float) -> None:
    bal, _ = run(B.FairGrad(alpha=alpha))
    w = bal.shared_weights.double()
    assert torch.allclose((G2 @ G2.T).double() @ w, w ** (-1 / alpha), atol=1e-4)


def test_power_balance_diagonal_closed_form() -> None:
    m = np.diag([4.0, 1.0])
    assert np.allclose(solve_power_balance(m, 1.0), [0.5, 1.0])


def test_aligned_mtl_orthonormalises() -> None:
    bal, _ = run(B.AlignedMTL())
    m = (G2 @ G2.T).double()
    evals, evecs = torch.linalg.eigh(m)
    b = evals.min().sqrt() * evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    assert torch.allclose(bal.shared_weights.double(), b.sum(0), atol=1e-5)
    # orthogonal gradients of equal norm: identity weights
    bal, _ = run(B.AlignedMTL(), grads=torch.eye(2))
    assert torch.allclose(bal.shared_weights, torch.ones(2))


def test_upgrad_and_dualproj_non_conflicting_give_mean() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    for b in (B.UPGrad(), B.DualProj()):
        bal, _ = run(b, grads=g)
        assert torch.allclose(shared(bal, g), g.mean(0), atol=1e-6)


def test_upgrad_and_dualproj_resolve_conflict() -> None:
    for b in (B.UPGrad(), B.DualProj()):
        bal, _ = run(b)
        assert (G2 @ shared(bal) >= -1e-6).all()
    # DualProj by hand: project mean (0, 0.5) onto {d : <g_i, d> >= 0}: violates g1 (<g1, m> = 0)? no -> it equals mean
    bal, _ = run(B.DualProj())
    assert torch.allclose(shared(bal), G2.mean(0), atol=1e-6)


def test_config_equal_cosines_and_scale() -> None:
    bal, _ = run(B.ConFIG())
    d = shared(bal)
    units = G2 / G2.norm(dim=1, keepdim=True)
    cos = units @ d / d.norm()
    assert torch.allclose(cos, cos[0].expand(2), atol=1e-5) and float(cos[0]) > 0
    assert torch.allclose(d.norm(), (G2 @ (d / d.norm())).sum(), atol=1e-5)


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    g = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -1.0, 1.0]])
    bal, _ = run(B.GradDrop(), grads=g, losses=torch.ones(2))
    d = bal.shared_direction
    # coordinates where all agree are untouched; purity 1 or 0
    assert torch.allclose(d[1:], torch.tensor([-3.0, 4.0]))
    assert float(d[0]) in (1.0, -1.0)


def test_gradvac_no_adjustment_when_above_target() -> None:
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bal, state = run(B.GradVac(beta=0.5), grads=g)
    assert torch.allclose(shared(bal, g), g.sum(0))
    assert math.isclose(float(state["phi"][0, 1]), 0.5 * (1 / math.sqrt(2)), rel_tol=1e-5)


def test_gradvac_raises_cosine_to_target() -> None:
    gv = B.GradVac(beta=0.5)
    state = {"phi": torch.full((2, 2), 0.5)}
    bal, _ = run(gv, state=state)
    # with two tasks: g_i' = g_i + a_i g_j with cos(g_i', g_j) = 0.5 exactly; solve a_i by bisection
    def coef(gi: torch.Tensor, gj: torch.Tensor) -> float:
        lo, hi = 0.0, 100.0
        for _ in range(200):
            mid = (lo + hi) / 2
            v = gi + mid * gj
            lo, hi = (mid, hi) if float(v @ gj / (v.norm() * gj.norm())) < 0.5 else (lo, mid)
        return lo

    a0, a1 = coef(G2[0], G2[1]), coef(G2[1], G2[0])
    assert torch.allclose(bal.shared_weights, torch.tensor([1 + a1, 1 + a0]), atol=1e-4)


def test_moco_first_step_by_hand() -> None:
    bal, state = run(B.MoCo(beta=0.5, gamma=0.1, rho=0.0))
    gt = G2 / G2.norm(dim=1, keepdim=True) * L2[:, None]
    y = 0.5 * gt
    lam = torch.softmax(torch.full((2,), 0.5) - 0.1 * (y @ y.T) @ torch.full((2,), 0.5), 0)
    assert torch.allclose(state["y"], y) and torch.allclose(bal.shared_direction, y.T @ lam)


def test_db_mtl_first_step_by_hand() -> None:
    # the buffer starts at zero: step 1 (k = 1) gives buf = g + 0.9 (0 - g) = 0.1 g, g_t = grad L_t / L_t
    # = [(1, 0), (-0.5, 0.5)]; norms [0.1, 0.1 / sqrt 2], alpha = [1, sqrt 2]; d = 0.1 (1, 0) + 0.1 (-1/sqrt 2, 1/sqrt 2)
    bal, state = run(B.DBMTL(beta=0.9, beta_sigma=0.5))
    r = 1 / math.sqrt(2)
    assert torch.allclose(state["buffer"], torch.tensor([[0.1, 0.0], [-0.05, 0.05]]))
    assert torch.allclose(bal.shared_direction, torch.tensor([0.1 - 0.1 * r, 0.1 * r]), atol=1e-7)
    assert torch.allclose(bal.weights, 1 / L2)
    # step 2 (k = 2): buf = g + 0.9 / sqrt 2 (buf - g)
    _, state = run(B.DBMTL(beta=0.9, beta_sigma=0.5), step=1, state=state)
    g = G2 / L2[:, None]
    assert torch.allclose(state["buffer"], g + 0.9 / math.sqrt(2) * (0.1 * g - g))


def test_gradnorm_moves_weight_to_slow_task() -> None:
    gn = B.GradNorm(alpha=1.5, lr=0.1)
    eye = torch.eye(2)  # equal gradient norms: the first step changes nothing
    _, state = run(gn, grads=eye, losses=torch.tensor([1.0, 1.0]))
    assert torch.allclose(state["w"], torch.ones(2))
    _, state = run(gn, grads=eye, losses=torch.tensor([0.2, 0.9]), state=state)
    w = state["w"]
    assert float(w[1]) > float(w[0]) and math.isclose(float(w.sum()), 2.0, rel_tol=1e-5)


def test_excess_mtl_upweights_high_excess_risk() -> None:
    ex = B.ExcessMTL(robust_step_size=1.0)
    _, state = run(ex)
    g = torch.tensor([[0.1, 0.0], [-3.0, 3.0]])
    _, state = run(ex, grads=g, state=state)
    assert float(state["w"][1]) > float(state["w"][0])


def test_famo_weights_normalised_inverse_losses_at_start() -> None:
    bal, _ = run(B.FAMO(), None)
    expected = (1 / L2) / (1 / L2).sum()
    assert torch.allclose(bal.weights, expected)


def test_stch_weights_after_warmup() -> None:
    st = B.STCH(mu=0.5, warmup_steps=1)
    _, state = run(st, None, torch.tensor([2.0, 2.0]))
    bal, _ = run(st, None, torch.tensor([1.0, 2.0]), state=state)
    u = torch.log(torch.tensor([0.5, 1.0]))
    assert torch.allclose(bal.weights, 2 * torch.softmax(u / 0.5, 0) / torch.tensor([1.0, 2.0]))


def test_rlw_is_on_simplex_and_reproducible() -> None:
    a, _ = run(B.RLW(), None, seed=3)
    b, _ = run(B.RLW(), None, seed=3)
    assert torch.equal(a.weights, b.weights) and math.isclose(float(a.weights.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: B.DWA(temperature=0), "temperature"),
        (lambda: B.CAGrad(c=-1), "c must"),
        (lambda: B.GradVac(beta=2), "beta"),
        (lambda: B.MGDA(normalization="x"), "normalization"),  # type: ignore[arg-type]
        (lambda: B.NashMTL(update_every=0), "update_every"),
        (lambda: B.StaticWeighting([-1.0]), "static weights"),
    ],
)
def test_constructor_validation_names_value(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make()


def test_nash_mtl_cvxpy_agrees_with_newton() -> None:
    pytest.importorskip("cvxpy")
    g3 = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) + 0.5
    for g in (G2, g3):
        a, _ = run(B.NashMTL(), grads=g, losses=torch.ones(len(g)))
        b, _ = run(B.NashMTL(solver="cvxpy"), grads=g, losses=torch.ones(len(g)))
        assert torch.allclose(a.shared_weights, b.shared_weights, rtol=1e-2, atol=1e-3)


def test_nash_mtl_cvxpy_missing_is_an_import_error_with_hint(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(ImportError, match=r"fedmtl\[solvers\]"):
        B.NashMTL(solver="cvxpy")
