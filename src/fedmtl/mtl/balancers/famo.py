"""Fast adaptive multitask optimisation (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class FAMO(LossBalancer):
    """Loss weights ``z_t / (c L_t)`` with ``z = softmax(xi)`` and ``c = sum_t z_t / L_t``.

    ``xi`` follows Adam (learning rate ``lr``, weight decay ``gamma``) on ``J_softmax^T delta`` where
    ``delta_t`` is the decrease of ``log L_t`` since the previous step. The paper re-evaluates the
    losses on the same batch after the step; here the next step's losses are used (one forward
    pass saved; documented approximation). O(1) in the number of tasks: no per-task gradients.
    """

    def __init__(self, lr: float = 0.025, gamma: float = 0.001, beta1: float = 0.9, beta2: float = 0.999):
        self.lr = check_positive("lr", lr)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.betas = (beta1, beta2)

    def init(self, num_tasks: int) -> TensorTree:
        z = torch.zeros(num_tasks)
        return {"xi": z, "m": z.clone(), "v": z.clone(), "t": torch.tensor(0), "prev_log_loss": z.clone(), "has_prev": torch.tensor(False)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        logl = inp.losses.detach().float().cpu().clamp_min(1e-8).log()
        xi, m, v, t = state["xi"], state["m"], state["v"], int(state["t"])  # type: ignore[arg-type]
        if bool(state["has_prev"]):
            delta = state["prev_log_loss"] - logl  # type: ignore[operator]
            z = torch.softmax(xi, 0)  # type: ignore[arg-type]
            g = z * delta - z * (z @ delta) + self.gamma * xi  # type: ignore[operator]
            t += 1
            b1, b2 = self.betas
            m = b1 * m + (1 - b1) * g  # type: ignore[operator]
            v = b2 * v + (1 - b2) * g * g  # type: ignore[operator]
            xi = xi - self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)  # type: ignore[operator]
        z = torch.softmax(xi, 0)  # type: ignore[arg-type]
        inv = z / logl.exp()
        w = inv / inv.sum()
        new = {"xi": xi, "m": m, "v": v, "t": torch.tensor(t), "prev_log_loss": logl, "has_prev": torch.tensor(True)}
        return Balance(weights=w.to(inp.losses)), new


register("balancer", "famo", lambda cfg, tasks: FAMO(**options(cfg)), mtl_cfg.FAMO, loss_only=True)
