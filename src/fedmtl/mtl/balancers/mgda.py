"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import min_norm_weights
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, GradSource
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree

Normalization = Literal["none", "l2", "loss", "loss+"]


def normalizers(m: np.ndarray, losses: np.ndarray, how: Normalization) -> np.ndarray:
    """Per-task gradient scales ``[T]`` (``g_t / n_t`` is what the solver sees), as in the paper's code."""
    norms = np.sqrt(np.clip(np.diag(m), 0, None))
    if how == "l2":
        return np.maximum(norms, 1e-12)
    if how == "loss":
        return np.maximum(losses, 1e-12)
    if how == "loss+":
        return np.maximum(losses * norms, 1e-12)
    return np.ones_like(losses)


class MGDA(GradBalancer):
    """The min-norm point of the convex hull of the (normalised) task gradients: a common descent direction.

    Solved on the ``[T, T]`` Gramian by Frank-Wolfe (closed form for two tasks). Returns shared
    weights ``w_t / n_t`` (so the shared gradient is the min-norm point); heads keep weight 1.
    """

    def __init__(self, normalization: Normalization = "none"):
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"normalization must be one of none, l2, loss, loss+; got {normalization!r}")
        self.normalization = normalization

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        m = inp.gramian().cpu().numpy()
        n = normalizers(m, inp.losses.detach().double().cpu().numpy(), self.normalization)
        w = min_norm_weights(m / np.outer(n, n)) / n
        return Balance.for_shared(inp.losses, weights=w), state


class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients of the shared representation (an upper bound; one trunk backward)."""

    forced_source: GradSource | None = "representation"


register("balancer", "mgda", lambda cfg, tasks: MGDA(**options(cfg)), mtl_cfg.MGDA)
register("balancer", "mgda_ub", lambda cfg, tasks: MGDAUB(**options(cfg)), mtl_cfg.MGDAUB)
