"""Fixed loss weightings: equal weights, and static weights (f1 + lambda f2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class EqualWeighting(LossBalancer):
    """Every task weight 1: the plain sum of task losses."""

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        return Balance(weights=torch.ones_like(inp.losses)), state


class StaticWeighting(LossBalancer):
    """Fixed weights, one per task, in the objective's task order: ``sum_t lambda_t f_t``."""

    def __init__(self, weights: Sequence[float]):
        if any(w < 0 for w in weights):
            raise ValueError(f"static weights must be >= 0, got {list(weights)}")
        self.weights = torch.tensor(list(weights), dtype=torch.float32)

    def init(self, num_tasks: int) -> TensorTree:
        if num_tasks != len(self.weights):
            raise ValueError(f"static weighting has {len(self.weights)} weights for {num_tasks} tasks")
        return {}

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        return Balance(weights=self.weights.to(inp.losses)), state


register("balancer", "equal", lambda cfg, tasks: EqualWeighting(), mtl_cfg.EqualWeighting, loss_only=True)
# weights naming tasks this client does not hold are simply unused here; the
# experiment checks once that every name is a task of the federation.
register("balancer", "static", lambda cfg, tasks: StaticWeighting([cfg.weights.get(n, 1.0) for n in tasks]), mtl_cfg.StaticWeighting, loss_only=True)
