"""MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-Objective Learning: A Provably Convergent Approach", ICLR 2023)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class MoCo(GradBalancer):
    """Momentum-tracked task gradients ``Y`` and simplex weights ``lambda``; direction ``Y^T lambda``.

    ``Y <- Y - beta_k (Y - G~)`` with ``G~`` the gradients rescaled to norm ``L_t``;
    ``lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda)``; ``beta_k = beta / k^beta_sigma`` and
    likewise ``gamma_k`` (as in LibMTL). ``Y`` has one column per shared parameter, so MoCo needs
    gradients of the shared parameters (not of the representation).
    """

    representation_ok = False

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5, rho: float = 0.0):
        self.beta = check_positive("beta", beta)
        self.beta_sigma = check_positive("beta_sigma", beta_sigma, allow_zero=True)
        self.gamma = check_positive("gamma", gamma)
        self.gamma_sigma = check_positive("gamma_sigma", gamma_sigma, allow_zero=True)
        self.rho = check_positive("rho", rho, allow_zero=True)

    def init(self, num_tasks: int) -> TensorTree:
        return {"y": torch.zeros(num_tasks, 0), "lambd": torch.full((num_tasks,), 1.0 / num_tasks)}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        k = inp.step + 1
        g = inp.grads.detach()
        g = g / (g.norm(dim=1, keepdim=True) + 1e-8) * inp.losses.detach()[:, None]
        y = state["y"]
        y = torch.zeros_like(g) if y.shape[1] == 0 else y.to(g)  # type: ignore[union-attr]
        y = y - (self.beta / k**self.beta_sigma) * (y - g)
        lam = state["lambd"].to(g)  # type: ignore[union-attr]
        t = len(lam)
        lam = torch.softmax(lam - (self.gamma / k**self.gamma_sigma) * (y @ y.T + self.rho * torch.eye(t, dtype=g.dtype, device=g.device)) @ lam, 0)
        return Balance.for_shared(inp.losses, direction=y.T @ lam), {"y": y, "lambd": lam.cpu()}


register("balancer", "moco", lambda cfg, tasks: MoCo(**options(cfg)), mtl_cfg.MoCo, per_parameter_state=True)
