"""UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import project_to_dual_cone
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def upgrad_weights(m: np.ndarray, pref: np.ndarray | None = None) -> np.ndarray:
    """``sum_i argmin_{v >= p_i e_i} v^T M v``: each ``p_i g_i`` projected onto the dual cone of the rows, summed
    (``p = 1/T``: the mean of the projections)."""
    t = m.shape[0]
    p = np.full(t, 1.0 / t) if pref is None else pref
    return sum(project_to_dual_cone(m, p[i] * np.eye(t)[i]) for i in range(t))  # type: ignore[return-value]


def dualproj_weights(m: np.ndarray, pref: np.ndarray | None = None) -> np.ndarray:
    """The projection of ``G^T p`` (the mean gradient when ``p = 1/T``) onto the dual cone: ``argmin_{v >= p} v^T M v``."""
    t = m.shape[0]
    return project_to_dual_cone(m, np.full(t, 1.0 / t) if pref is None else pref)


def _check_pref(pref: Sequence[float] | None) -> np.ndarray | None:
    if pref is None:
        return None
    values = [float(v) for v in pref]
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"pref_vector must be a non-empty list of finite numbers >= 0, got {list(pref)}")
    return np.asarray(values)


class _DualCone(GradBalancer):
    """Shared validation of the preference vector (TorchJD's ``pref_vector``; default ``1/T``)."""

    def __init__(self, pref_vector: Sequence[float] | None = None):
        self.pref_vector = _check_pref(pref_vector)

    def _pref(self, t: int) -> np.ndarray | None:
        if self.pref_vector is not None and len(self.pref_vector) != t:
            raise ValueError(f"pref_vector has {len(self.pref_vector)} entries for {t} tasks")
        return self.pref_vector


class UPGrad(_DualCone):
    """Unconflicting projection of gradients: every task's improvement is non-negative, and the
    aggregation is linear under scaling; a quadratic program per task on the ``[T, T]`` Gramian (exact NNLS).

    Args:
        pref_vector: per-task weights ``p`` (length ``T``, finite, >= 0); ``None`` is ``1/T``.
    """

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = upgrad_weights(inp.gramian().cpu().numpy(), self._pref(inp.grads.shape[0]))
        return Balance.for_shared(inp.losses, weights=w), state


class DualProj(_DualCone):
    """``G^T p`` (the mean gradient by default) projected onto the dual cone of the task gradients
    (one QP on the Gramian).

    Args:
        pref_vector: per-task weights ``p`` (length ``T``, finite, >= 0); ``None`` is ``1/T``.
    """

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = dualproj_weights(inp.gramian().cpu().numpy(), self._pref(inp.grads.shape[0]))
        return Balance.for_shared(inp.losses, weights=w), state


def preference(cfg: mtl_cfg.UPGrad | mtl_cfg.DualProj, tasks: Sequence[str]) -> list[float] | None:
    """The preference vector in the objective's task order; every task must have a weight."""
    if cfg.pref_vector is None:
        return None
    missing = [t for t in tasks if t not in cfg.pref_vector]
    if missing:
        raise ValueError(f"{cfg.name}.pref_vector has no weight for tasks {missing}; it lists {sorted(cfg.pref_vector)}")
    return [cfg.pref_vector[t] for t in tasks]


register("balancer", "upgrad", lambda cfg, tasks: UPGrad(preference(cfg, tasks)), mtl_cfg.UPGrad)
register("balancer", "dualproj", lambda cfg, tasks: DualProj(preference(cfg, tasks)), mtl_cfg.DualProj)
