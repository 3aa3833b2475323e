"""DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class DBMTL(GradBalancer):
    """Loss-scale balancing (log losses) plus gradient-magnitude balancing.

    The gradients of ``log L_t`` (``g_t / L_t``) are averaged in an EMA buffer with factor
    ``beta / k^beta_sigma``; each is rescaled to the largest buffered norm and the sum is the shared
    direction. Heads receive the gradient of ``sum_t log L_t``. The buffer has one column per shared
    parameter (gradients of the shared parameters only) and starts from zero as in the authors' code
    (LibMTL's ``DB_MTL``): the first buffer is ``(1 - beta) g``.
    """

    representation_ok = False

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.5):
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.beta_sigma = check_positive("beta_sigma", beta_sigma, allow_zero=True)

    def init(self, num_tasks: int) -> TensorTree:
        return {"buffer": torch.zeros(num_tasks, 0)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        loss = inp.losses.detach().clamp_min(1e-8)
        g = inp.grads.detach() / loss.to(inp.grads)[:, None]
        buf = state["buffer"]
        k = inp.step + 1
        prev = torch.zeros_like(g) if buf.shape[1] == 0 else buf.to(g)  # type: ignore[union-attr]
        buf = g + (self.beta / k**self.beta_sigma) * (prev - g)
        norms = buf.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        return Balance(weights=1.0 / loss, shared_direction=(alpha[:, None] * buf).sum(0)), {"buffer": buf}


register("balancer", "db_mtl", lambda cfg, tasks: DBMTL(**options(cfg)), mtl_cfg.DBMTL, per_parameter_state=True)
