"""SDMGrad (Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023)."""

from __future__ import annotations

import numpy as np

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import min_norm_weights
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


def sdmgrad_weights(m: np.ndarray, lam: float) -> np.ndarray:
    """Coefficients ``a`` with ``G^T a = (g_w + lam g0) / (1 + lam)``, ``w = argmin_{w in simplex} ||g_w + lam g0||^2``.

    Since ``sum_i w_i = 1``, ``g_w + lam g0 = sum_i w_i (g_i + lam g0)``: ``w`` is the min-norm point of the
    shifted gradients, whose Gramian is ``M + lam (b 1^T + 1 b^T) + lam^2 (u^T b) 1 1^T`` (``b = M u``, ``u = 1/T``).
    """
    t = m.shape[0]
    u = np.full(t, 1.0 / t)
    b = m @ u
    ones = np.ones(t)
    shifted = m + lam * (np.outer(b, ones) + np.outer(ones, b)) + lam**2 * float(u @ b) * np.outer(ones, ones)
    w = min_norm_weights(shifted)
    return (w + lam * u) / (1.0 + lam)


class SDMGrad(GradBalancer):
    """Stochastic direction-oriented multi-objective gradient: MGDA's min-norm problem pulled towards the
    mean gradient ``g0``, ``w = argmin_{w in simplex} 1/2 ||g_w + lam g0||^2``, direction ``(g_w + lam g0) / (1 + lam)``.

    ``lam = 0`` is MGDA; a large ``lam`` tends to the mean gradient. The paper tracks ``w`` with projected
    stochastic steps, the two factors of the Gramian and the direction drawn from three independent
    minibatches; a balancer sees one minibatch, so here all three are the same gradients and ``w`` is
    the subproblem's exact minimiser (the min-norm solver MGDA uses: exact up to six tasks). The
    authors' code takes 20 heavy-ball steps with learning rate 5, which need not converge (on
    ``G = [[1, 0], [-1, 1]]`` with ``lam = 0`` they stay at ``w = (0, 1)``; the minimiser is ``(0.6, 0.4)``).

    Args:
        lam: the pull towards the mean gradient (the authors' default 0.3).
    """

    def __init__(self, lam: float = 0.3):
        self.lam = check_positive("lam", lam, allow_zero=True)

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        a = sdmgrad_weights(inp.gramian().cpu().numpy(), self.lam)
        return Balance.for_shared(inp.losses, weights=a), state


register("balancer", "sdmgrad", lambda cfg, tasks: SDMGrad(**options(cfg)), mtl_cfg.SDMGrad)
