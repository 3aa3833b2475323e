"""ConFIG (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def config_weights(m: torch.Tensor) -> torch.Tensor:
    """Coefficients ``a`` of ``d = G^T a``.

    ``g_v = U^+ 1`` (``U`` the unit task gradients), ``d = (sum_i <g_i, g_v/||g_v||>) g_v / ||g_v||``:
    ``d`` has the same positive projection on every unit task gradient. From the Gramian only.
    """
    n = m.diagonal().clamp_min(1e-20).sqrt()
    uu = m / (n[:, None] * n[None, :])
    c = torch.linalg.pinv(uu) @ torch.ones(m.shape[0], dtype=m.dtype)
    a = c / n
    norm2 = (a @ m @ a).clamp_min(1e-30)
    return a * (m @ a).sum() / norm2


class ConFIG(GradBalancer):
    """Conflict-free direction with equal cosine to every task gradient, scaled by the gradients' total projection."""

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = config_weights(inp.gramian().cpu())
        return Balance.for_shared(inp.losses, weights=w), state


register("balancer", "config", lambda cfg, tasks: ConFIG(), mtl_cfg.ConFIG)
