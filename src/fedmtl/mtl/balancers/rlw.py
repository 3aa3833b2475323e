"""Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class RLW(LossBalancer):
    """Weights ``softmax(z)``, ``z ~ N(0, I)`` drawn afresh each step from the passed generator.

    Without a generator the draw is seeded by the step counter (deterministic, no global RNG).
    """

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        gen = inp.generator or torch.Generator().manual_seed(inp.step)
        z = torch.randn(inp.losses.shape, generator=gen, device=gen.device)
        return Balance(weights=torch.softmax(z, 0).to(inp.losses)), state


register("balancer", "rlw", lambda cfg, tasks: RLW(), mtl_cfg.RLW, loss_only=True)
