"""Soft parameter sharing: one model per task, coupled by a penalty (Duong et al., ACL 2015; Yang & Hospedales, ICLR 2017 workshop).

``penalty = lambda sum_t ||theta_t - theta_bar||^2`` over the task trunks, ``theta_bar`` the mean over
all the model's tasks; its gradient w.r.t. ``theta_t`` is ``2 lambda (theta_t - theta_bar)`` (the
``theta_bar`` terms cancel because the deviations sum to zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks, task_group
from fedmtl.mtl.models.trunks import build_trunk, mlp
from fedmtl.registry import register
from fedmtl.tasks import Task


class SoftSharingModel(MultiTaskModel):
    """``columns[t] = head_t(trunk_t(x))``; every parameter is task-specific (``task:<t>``)."""

    def __init__(self, make_trunk: Callable[[], tuple[nn.Module, int]], tasks: Sequence[Task], head_hidden: Sequence[int] = (), strength: float = 1e-3):
        super().__init__(tasks)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength = strength
        trunks = {}
        heads = {}
        for t in tasks:
            trunk, dim = make_trunk()
            trunks[t.name] = trunk
            heads[t.name] = mlp(dim, head_hidden, t.output_dim)
        self.trunks = nn.ModuleDict(trunks)
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        return {t: self.heads[t](self.trunks[t](x)) for t in check_tasks(self, tasks)}

    def penalty(self) -> Tensor | None:
        if self.strength == 0 or len(self.tasks) < 2:
            return None
        per_task = [list(self.trunks[t].parameters()) for t in self.tasks]
        total: Tensor = torch.zeros(())
        for ps in zip(*per_task):
            stacked = torch.stack(ps)
            total = total + ((stacked - stacked.mean(0, keepdim=True)) ** 2).sum()
        return self.strength * total

    def group_of(self, param_name: str) -> str:
        return task_group(param_name.split(".")[1])

register(
    "model",
    "soft_sharing",
    lambda cfg, shape, tasks: SoftSharingModel(lambda: build_trunk(cfg.trunk, shape), tasks, cfg.head_hidden, cfg.strength),
    model_cfg.SoftSharing,
)
