"""Geometric loss strategy (Chennupati et al., "MultiNet++", CVPR Workshops 2019)."""

from __future__ import annotations

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class GLS(LossBalancer):
    """Minimise the geometric mean ``(prod_t L_t)^{1/T}``.

    Returned as the loss weights with the same gradient: ``w_t = (prod L)^{1/T} / (T L_t)``.
    """

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        logl = inp.losses.detach().clamp_min(1e-12).log()
        gm = logl.mean().exp()
        return Balance(weights=gm / (inp.losses.numel() * logl.exp())), state


register("balancer", "gls", lambda cfg, tasks: GLS(), mtl_cfg.GLS, loss_only=True)
