"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive, leaf
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class ExcessMTL(GradBalancer):
    """Weights by exponentiated gradient on estimated excess risks.

    The excess risk of task ``t`` is estimated as ``g_t^T H_t^{-1} g_t`` with ``H_t`` an AdaGrad-style
    diagonal ``sqrt(sum of g_t^2)``; risks are normalised by their first value, ``w <- w exp(eta r)``,
    then rescaled to sum to ``T``. Per-task gradients of the shared parameters (the accumulator
    has one entry per parameter, so the representation is not an option).
    """

    representation_ok = False

    def __init__(self, robust_step_size: float = 0.01):
        self.eta = check_positive("robust_step_size", robust_step_size)

    def init(self, num_tasks: int) -> TensorTree:
        return {"w": torch.ones(num_tasks), "grad_sq": torch.zeros(num_tasks, 0), "initial": torch.zeros(num_tasks)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        g = inp.grads.detach().float()
        acc = leaf(state, "grad_sq")
        acc = (g * g) if acc.shape[1] == 0 else acc.to(g) + g * g
        risk = (g * g / (acc + 1e-7).sqrt()).sum(1).cpu()
        initial = leaf(state, "initial")
        if acc.shape[1] and not bool((initial > 0).any()):
            initial = risk.clamp_min(1e-12)
        w = state["w"] * torch.exp(self.eta * risk / initial)  # type: ignore[operator]
        w = w * len(w) / w.sum()
        return Balance(weights=w.to(inp.losses)), {"w": w, "grad_sq": acc, "initial": initial}


register("balancer", "excess_mtl", lambda cfg, tasks: ExcessMTL(**options(cfg)), mtl_cfg.ExcessMTL, per_parameter_state=True)
