"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class UncertaintyWeighting(LossBalancer):
    """Objective ``sum_t L_t / (2 exp(s_t)) + s_t / 2`` with ``s_t = log sigma_t^2`` learned.

    The log-variances live in the state and take one SGD step of size ``lr`` per call, on their
    closed-form gradient ``(1 - L_t exp(-s_t)) / 2``. Loss weights are ``1 / (2 exp(s_t))``.
    """

    def __init__(self, lr: float = 0.05):
        self.lr = check_positive("lr", lr)

    def init(self, num_tasks: int) -> TensorTree:
        return {"log_var": torch.zeros(num_tasks)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        s = state["log_var"]
        w = 0.5 * torch.exp(-s)  # type: ignore[operator]
        grad = 0.5 * (1.0 - inp.losses.detach().float().cpu() * torch.exp(-s))  # type: ignore[operator]
        return Balance(weights=w.to(inp.losses)), {"log_var": s - self.lr * grad}  # type: ignore[operator]


register("balancer", "uw", lambda cfg, tasks: UncertaintyWeighting(**options(cfg)), mtl_cfg.UncertaintyWeighting, loss_only=True)
