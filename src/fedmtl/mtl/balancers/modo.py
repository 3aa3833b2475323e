"""MoDo (Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
Generalization and Conflict-Avoidance", NeurIPS 2023)."""

from __future__ import annotations

import numpy as np
import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import project_simplex
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive, leaf
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class MoDo(GradBalancer):
    """Multi-objective gradient with double sampling: one projected step on the MGDA weights per step,
    ``lambda <- Proj_simplex(lambda - gamma (G1 G2^T lambda + rho lambda))``, then the direction ``G3^T lambda``.

    The paper draws ``G1``, ``G2``, ``G3`` from three independent minibatches (unbiased steps on
    ``lambda``); a balancer sees one minibatch, so here ``G1 = G2 = G3 = G``, the single-sample form
    (the same update, biased by the batch's noise). ``lambda`` starts at ``1/T`` and lives in the state;
    the task-specific parameters get the plain sum of their losses' gradients.

    Args:
        gamma: the step size on ``lambda`` (the authors' default 0.001).
        rho: the l2 regularisation of ``lambda`` (default 0.1).
    """

    def __init__(self, gamma: float = 0.001, rho: float = 0.1):
        self.gamma = check_positive("gamma", gamma)
        self.rho = check_positive("rho", rho, allow_zero=True)

    def init(self, num_tasks: int) -> TensorTree:
        return {"lambd": torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        lam = leaf(state, "lambd").double().cpu().numpy()
        m = inp.gramian().cpu().numpy()
        lam = project_simplex(lam - self.gamma * (m @ lam + self.rho * lam))
        return Balance.for_shared(inp.losses, weights=lam), {"lambd": torch.as_tensor(np.asarray(lam))}


register("balancer", "modo", lambda cfg, tasks: MoDo(**options(cfg)), mtl_cfg.MoDo)
