"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing", ICML 2018)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class GradNorm(GradBalancer):
    """Learned loss weights ``w`` that equalise the gradient norms ``G_t = w_t ||g_t||``.

    Target ``G* = mean(G) r_t^alpha`` with ``r_t = (L_t / L_t(0)) / mean(L / L(0))``; ``w`` takes one
    SGD step of size ``lr`` on the closed-form gradient of ``sum_t |G_t - G*_t|`` (target held
    constant, as in the paper: ``sign(G_t - G*_t) ||g_t||``), then is renormalised to sum to ``T``.
    Per-task gradients: of the shared parameters or of the shared representation.
    """

    def __init__(self, alpha: float = 1.5, lr: float = 0.025):
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.lr = check_positive("lr", lr)

    def init(self, num_tasks: int) -> TensorTree:
        return {"w": torch.ones(num_tasks), "initial_loss": torch.zeros(num_tasks), "has_initial": torch.tensor(False)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        loss = inp.losses.detach().float().cpu()
        l0 = state["initial_loss"] if bool(state["has_initial"]) else loss
        w = state["w"]
        norms = inp.grads.detach().float().norm(dim=1).cpu()
        g = w * norms  # type: ignore[operator]
        ratio = loss / l0.clamp_min(1e-12)  # type: ignore[union-attr]
        target = g.mean() * (ratio / ratio.mean()) ** self.alpha
        new_w = (w - self.lr * torch.sign(g - target) * norms).clamp_min(1e-6)  # type: ignore[operator]
        new_w = new_w * len(loss) / new_w.sum()
        return Balance(weights=w.to(inp.losses)), {"w": new_w, "initial_loss": l0, "has_initial": torch.tensor(True)}  # type: ignore[union-attr]


register("balancer", "gradnorm", lambda cfg, tasks: GradNorm(**options(cfg)), mtl_cfg.GradNorm)
