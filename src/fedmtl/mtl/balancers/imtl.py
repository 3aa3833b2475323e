"""IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


def imtl_g_weights(m: torch.Tensor) -> torch.Tensor:
    """IMTL-G: ``alpha`` with ``G^T alpha`` having equal projections on every unit task gradient.

    With ``u_t = g_t / ||g_t||``, ``D = [g_1 - g_t]_{t>1}``, ``U = [u_1 - u_t]_{t>1}``:
    ``alpha_{2:} = g_1 U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:}``. All inner products come
    from the Gramian ``M``: ``<g_i, u_j> = M_ij / ||g_j||``.
    """
    t = m.shape[0]
    if t == 1:
        return torch.ones(1, dtype=m.dtype)
    n = m.diagonal().clamp_min(1e-20).sqrt()
    gu = m / n[None, :]  # <g_i, u_j>
    # D U^T [a, b] = <g_1 - g_a, u_1 - u_b>
    a = torch.arange(1, t)
    du = gu[0, 0] - gu[0, a][None, :] - gu[a, 0][:, None] + gu[a][:, a]
    g1u = gu[0, 0] - gu[0, a]
    rest = torch.linalg.lstsq(du.T, g1u[:, None]).solution[:, 0]  # g1u (DU^T)^{-1} as a row vector
    return torch.cat([1 - rest.sum(0, keepdim=True), rest])


class IMTL(GradBalancer):
    """IMTL-G on the gradients (shared parameters or representation), optionally with IMTL-L.

    IMTL-L (``loss_scaling=True``) learns ``s_t`` in the scaled loss ``e^{s_t} L_t - s_t``; ``s`` is in
    the state and takes one SGD step of size ``lr`` on its closed-form gradient ``e^{s_t} L_t - 1``.
    The scaled task gradients are ``e^{s_t} g_t``; IMTL-G's weights apply to them.
    """

    def __init__(self, loss_scaling: bool = False, lr: float = 0.025):
        self.loss_scaling = loss_scaling
        self.lr = check_positive("lr", lr)

    def init(self, num_tasks: int) -> TensorTree:
        return {"s": torch.zeros(num_tasks)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        s = state["s"]
        scale = torch.exp(s).double() if self.loss_scaling else torch.ones(inp.losses.numel(), dtype=torch.float64)  # type: ignore[arg-type]
        m = inp.gramian().cpu() * scale[:, None] * scale[None, :]
        alpha = imtl_g_weights(m) * scale
        if self.loss_scaling:
            s = s - self.lr * (torch.exp(s) * inp.losses.detach().float().cpu() - 1)  # type: ignore[operator,arg-type]
        w = scale.to(inp.losses)
        return Balance(weights=w, shared_weights=alpha.to(inp.losses)), {"s": s}


register("balancer", "imtl", lambda cfg, tasks: IMTL(**options(cfg)), mtl_cfg.IMTL)
