"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class GradDrop(GradBalancer):
    """Per coordinate, keep only the gradients of one sign, chosen with probability given by sign purity.

    ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` (``|.|^leak``-free version); draw ``U ~ U(0, 1)``;
    keep positive components where ``U < P`` and negative ones elsewhere. Nonlinear in the
    gradients, so it returns a shared direction; works on parameter or representation gradients
    (the paper applies it to the representation).
    """

    def __init__(self, leak: float = 0.0):
        if not 0 <= leak <= 1:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.leak = check_positive("leak", leak, allow_zero=True)

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        g = inp.grads.detach()
        purity = 0.5 * (1 + g.sum(0) / (g.abs().sum(0) + 1e-12))
        gen = inp.generator or torch.Generator().manual_seed(inp.step)
        u = torch.rand(purity.shape, generator=gen, device=gen.device).to(g)
        mask = ((purity > u)[None] & (g > 0)) | ((purity < u)[None] & (g < 0))
        keep = mask.to(g) * (1 - self.leak) + self.leak
        return Balance.for_shared(inp.losses, direction=(g * keep).sum(0)), state


register("balancer", "graddrop", lambda cfg, tasks: GradDrop(**options(cfg)), mtl_cfg.GradDrop)
