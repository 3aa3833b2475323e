"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers._solvers import solve_power_balance
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, check_positive
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class FairGrad(GradBalancer):
    """Alpha-fair utilities: weights ``w > 0`` solving ``G G^T w = w^{-1/alpha}``; direction ``G^T w``.

    ``alpha = 1`` is proportional fairness (the Nash-MTL condition); larger ``alpha`` is closer to
    max-min fairness. Solved by damped Newton in ``log w`` on the ``[T, T]`` Gramian.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = check_positive("alpha", alpha)

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = solve_power_balance(inp.gramian().cpu().numpy(), 1.0 / self.alpha)
        sw = torch.as_tensor(w, dtype=inp.losses.dtype, device=inp.losses.device)
        return Balance.for_shared(inp.losses, weights=sw), state


register("balancer", "fairgrad", lambda cfg, tasks: FairGrad(**options(cfg)), mtl_cfg.FairGrad)
