"""Cross-stitch networks (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.registry import register
from fedmtl.tasks import Task


class CrossStitchModel(MultiTaskModel):
    """One MLP column per task; after each hidden layer, a learned ``[T, T]`` unit mixes the columns.

    ``h_t <- sum_s a_ts h_s`` with ``a`` initialised to ``self_weight`` on the diagonal and the rest
    spread evenly. Columns are task-specific; the cross-stitch units are shared. Every column is
    computed even for a subset of tasks (they are mixed), but only the requested heads run.
    """

    task_modules = ("columns", "heads")

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], tasks: Sequence[Task], self_weight: float = 0.9):
        super().__init__(tasks)
        if not 0 < self_weight <= 1:
            raise ValueError(f"self_weight must be in (0, 1], got {self_weight}")
        t = len(tasks)
        d_in = math.prod(input_shape)
        dims = [d_in, *hidden]
        self.columns = nn.ModuleDict(
            {tk.name: nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]) for tk in tasks}
        )
        off = (1 - self_weight) / (t - 1) if t > 1 else 0.0
        init = torch.full((t, t), off) + torch.eye(t) * (self_weight - off)
        self.stitch = nn.ParameterList([nn.Parameter(init.clone()) for _ in hidden])
        self.heads = nn.ModuleDict({tk.name: nn.Linear(dims[-1], tk.output_dim) for tk in tasks})

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        order = self.task_names
        h = x.flatten(1).unsqueeze(0).expand(len(order), -1, -1)
        for layer, alpha in enumerate(self.stitch):
            h = torch.stack([torch.relu(self.columns[t][layer](h[i])) for i, t in enumerate(order)])  # type: ignore[index]
            h = torch.einsum("ts,snd->tnd", alpha, h)
        return {t: self.heads[t](h[order.index(t)]) for t in names}

register("model", "cross_stitch", lambda cfg, shape, tasks: CrossStitchModel(shape, cfg.hidden, tasks, cfg.self_weight), model_cfg.CrossStitch)
