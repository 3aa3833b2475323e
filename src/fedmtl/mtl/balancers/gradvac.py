"""Gradient Vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021)."""

from __future__ import annotations

import math

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class GradVac(GradBalancer):
    """Raise each pair's cosine similarity to an EMA target ``phi_ij`` (state), in random order; sum.

    When ``cos(g_i^pc, g_j) < phi_ij``: ``g_i^pc += g_j ||g_i^pc|| (phi sqrt(1-c^2) - c sqrt(1-phi^2)) / (||g_j|| sqrt(1-phi^2))``;
    ``phi_ij <- (1 - beta) phi_ij + beta c``. Tracked as coefficients on the Gramian (no ``[P]`` work).
    """

    def __init__(self, beta: float = 0.5):
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.beta = check_positive("beta", beta)

    def init(self, num_tasks: int) -> TensorTree:
        return {"phi": torch.zeros(num_tasks, num_tasks)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        m = inp.gramian().cpu()
        t = m.shape[0]
        phi = state["phi"].double().clone()  # type: ignore[union-attr]
        gen = inp.generator or torch.Generator().manual_seed(inp.step)
        c = torch.eye(t, dtype=m.dtype)
        norms = m.diagonal().clamp_min(1e-20).sqrt()
        for i in range(t):
            for j in torch.randperm(t, generator=gen, device=gen.device).tolist():
                if j == i:
                    continue
                ni = float((c[i] @ m @ c[i]).clamp_min(1e-20).sqrt())
                cos = float(c[i] @ m[:, j]) / (ni * float(norms[j]))
                target = float(phi[i, j])
                if cos < target:
                    c[i, j] += ni * (target * math.sqrt(max(1 - cos**2, 0)) - cos * math.sqrt(max(1 - target**2, 0))) / (
                        float(norms[j]) * math.sqrt(max(1 - target**2, 1e-12))
                    )
                phi[i, j] = (1 - self.beta) * target + self.beta * cos
        return Balance.for_shared(inp.losses, weights=c.sum(0)), {"phi": phi.float()}


register("balancer", "gradvac", lambda cfg, tasks: GradVac(**options(cfg)), mtl_cfg.GradVac)
