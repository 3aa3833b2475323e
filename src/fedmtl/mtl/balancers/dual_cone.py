"""UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD)."""

from __future__ import annotations

import numpy as np

from fedmtl.mtl.balancers._solvers import project_to_dual_cone
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, gramian
from fedmtl.tree import TensorTree


def upgrad_weights(m: np.ndarray) -> np.ndarray:
    """Mean over ``i`` of the projection of ``g_i / T`` onto the dual cone of the rows: ``sum_i argmin_{v >= e_i/T} v^T M v``."""
    t = m.shape[0]
    return sum(project_to_dual_cone(m, np.eye(t)[i] / t) for i in range(t))  # type: ignore[return-value]


def dualproj_weights(m: np.ndarray) -> np.ndarray:
    """The projection of the mean gradient onto the dual cone: ``argmin_{v >= 1/T} v^T M v``."""
    t = m.shape[0]
    return project_to_dual_cone(m, np.full(t, 1.0 / t))


class UPGrad(GradBalancer):
    """Unconflicting projection of gradients: every task's improvement is non-negative, and the
    aggregation is linear under scaling; a quadratic program per task on the ``[T, T]`` Gramian (exact NNLS)."""

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = upgrad_weights(gramian(inp.grads).cpu().numpy())
        return Balance.for_shared(inp.losses, weights=w), state


class DualProj(GradBalancer):
    """The mean gradient projected onto the dual cone of the task gradients (one QP on the Gramian)."""

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = dualproj_weights(gramian(inp.grads).cpu().numpy())
        return Balance.for_shared(inp.losses, weights=w), state
