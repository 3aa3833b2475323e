"""Smooth Tchebycheff scalarisation (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class STCH(LossBalancer):
    """Minimise ``T mu log sum_t exp(u_t / mu)`` with ``u_t = log(L_t / n_t)``.

    ``n`` (the nadir-style normaliser) is the mean loss over the first ``warmup_steps`` steps,
    during which the objective is ``sum_t log L_t``. Returned as loss weights with the same
    gradient: ``w_t = T softmax(u / mu)_t / L_t`` (``1 / L_t`` in warm-up).
    """

    def __init__(self, mu: float = 1.0, warmup_steps: int = 20):
        self.mu = check_positive("mu", mu)
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps

    def init(self, num_tasks: int) -> TensorTree:
        return {"nadir_sum": torch.zeros(num_tasks), "count": torch.tensor(0)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        loss = inp.losses.detach().float().cpu().clamp_min(1e-12)
        count, nsum = int(state["count"]), state["nadir_sum"]  # type: ignore[arg-type]
        if count < self.warmup_steps:
            w = 1.0 / loss
            state = {"nadir_sum": nsum + loss, "count": torch.tensor(count + 1)}  # type: ignore[operator]
        else:
            u = torch.log(loss / (nsum / count))  # type: ignore[operator]
            w = loss.numel() * torch.softmax(u / self.mu, 0) / loss
        return Balance(weights=w.to(inp.losses)), state


register("balancer", "stch", lambda cfg, tasks: STCH(**options(cfg)), mtl_cfg.STCH, loss_only=True)
