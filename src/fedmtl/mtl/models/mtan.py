"""Multi-task attention network (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

MLP form: a shared backbone of layers ``u_1..u_L``; each task has a soft-attention mask per layer,
``a_t^1 = sigmoid(A_t^1 u_1) * u_1`` and ``a_t^j = sigmoid(A_t^j [u_j, a_t^{j-1}]) * u_j``; the task head
reads ``a_t^L``. Backbone shared, attention modules and heads task-specific.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.registry import register
from fedmtl.tasks import Task


class MTANModel(MultiTaskModel):
    """Shared MLP backbone with per-task attention masks at every layer."""

    task_modules = ("attention", "heads")

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], tasks: Sequence[Task]):
        super().__init__(tasks)
        dims = [math.prod(input_shape), *hidden]
        self.backbone = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        att_in = [hidden[0]] + [hidden[j] + hidden[j - 1] for j in range(1, len(hidden))]
        self.attention = nn.ModuleDict({t.name: nn.ModuleList([nn.Linear(a, h) for a, h in zip(att_in, hidden)]) for t in tasks})
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden[-1], t.output_dim) for t in tasks})

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        u, h = [], x.flatten(1)
        for layer in self.backbone:
            h = torch.relu(layer(h))
            u.append(h)
        out = {}
        for t in names:
            a = None
            layers: nn.ModuleList = self.attention[t]  # type: ignore[assignment]
            for j, att in enumerate(layers):
                inp = u[j] if a is None else torch.cat([u[j], a], dim=1)
                a = torch.sigmoid(att(inp)) * u[j]
            out[t] = self.heads[t](a)
        return out

register("model", "mtan", lambda cfg, shape, tasks: MTANModel(shape, cfg.hidden, tasks), model_cfg.MTAN)
