"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from fedmtl._extras import require
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import solve_power_balance
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree

Solver = Literal["newton", "cvxpy"]


def _cvxpy_solve(m: np.ndarray, w0: np.ndarray, iters: int = 20) -> np.ndarray:  # pragma: no cover - optional
    """The paper's sequence of convex approximations, solved with CVXPY (the ``solvers`` extra)."""
    cp = require("cvxpy", "solvers", "Nash-MTL with solver='cvxpy'")
    t = m.shape[0]
    alpha = cp.Variable(t, nonneg=True)
    prev = cp.Parameter(t, value=w0)
    gram = cp.Parameter((t, t), value=m)
    g_alpha = gram @ alpha
    phi_tag = cp.Parameter(t)
    phi = phi_tag @ (alpha - prev)
    constraints = [-cp.log(alpha[i]) - cp.log(g_alpha[i]) <= 0 for i in range(t)]
    problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + phi), constraints)
    w = w0 if (m @ w0 > 1e-12).all() else 1.0 / np.sqrt(np.clip(np.diag(m), 1e-20, None))
    if not (m @ w > 1e-12).all():
        raise RuntimeError("Nash-MTL (cvxpy): no feasible starting point (G G^T alpha > 0); try solver='newton'")
    for _ in range(iters):
        prev.value = w
        phi_tag.value = 1.0 / w + (1.0 / (m @ w)) @ m
        try:
            problem.solve(warm_start=True)
        except (cp.SolverError, ValueError):
            break
        if alpha.value is None:
            break
        new = np.clip(alpha.value, 1e-8, None)
        if np.abs(new - w).max() < 1e-6:
            w = new
            break
        w = new
    return w


class NashMTL(GradBalancer):
    """Nash bargaining: ``alpha > 0`` with ``(G G^T) alpha = 1 / alpha``; shared direction ``G^T alpha``.

    The paper's direction, invariant to a common scaling of the gradients (``G -> k G`` gives
    ``alpha -> alpha / k``); on two tasks ``alpha_t = 1 / (||g_t|| sqrt(1 + cos(g_1, g_2)))``. For
    conditioning the system is solved on ``M / s`` with ``s = ||G G^T||_F`` and the solution divided by
    ``sqrt(s)`` (the authors' code keeps the scaled solution, whose direction is ``sqrt(s)`` times the
    paper's). The default solver is a damped Newton iteration in pure numpy on the ``[T, T]`` system
    (exact at convergence); ``solver="cvxpy"`` runs the paper's convex-concave procedure (optional
    ``solvers`` extra; an ImportError with the install hint if cvxpy is missing, never a silent
    fallback). ``update_every`` reuses the previous weights in between (as in the paper); they live
    in the state.
    """

    def __init__(self, solver: Solver = "newton", update_every: int = 1):
        if solver not in ("newton", "cvxpy"):
            raise ValueError(f"solver must be 'newton' or 'cvxpy', got {solver!r}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        if solver == "cvxpy":
            require("cvxpy", "solvers", "Nash-MTL with solver='cvxpy'")
        self.solver = solver
        self.update_every = update_every

    def init(self, num_tasks: int) -> TensorTree:
        return {"alpha": torch.ones(num_tasks, dtype=torch.float64)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        prev = state["alpha"].double().numpy()  # type: ignore[union-attr]
        if inp.step % self.update_every == 0:
            m = inp.gramian().cpu().numpy()
            root = np.sqrt(max(float(np.linalg.norm(m)), 1e-40))
            m, w0 = m / root**2, prev * root  # M a = 1/a  <=>  (M / s) (sqrt(s) a) = 1 / (sqrt(s) a)
            scaled = _cvxpy_solve(m, w0) if self.solver == "cvxpy" else solve_power_balance(m, 1.0, w0=w0)
            alpha = scaled / root
        else:
            alpha = prev
        sw = torch.as_tensor(alpha, dtype=inp.losses.dtype, device=inp.losses.device)
        return Balance.for_shared(inp.losses, weights=sw), {"alpha": torch.as_tensor(alpha)}


register("balancer", "nash_mtl", lambda cfg, tasks: NashMTL(**options(cfg)), mtl_cfg.NashMTL)
