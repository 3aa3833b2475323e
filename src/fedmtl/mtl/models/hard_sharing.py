"""Hard parameter sharing: one shared trunk, one head per task (Caruana, 1997)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fedmtl.mtl.models.base import SHARED, MultiTaskModel, check_tasks, task_group
from fedmtl.mtl.models.trunks import mlp
from fedmtl.tasks import Task


class HardSharingModel(MultiTaskModel):
    """``trunk`` -> representation -> ``heads[task]`` -> prediction."""

    def __init__(self, trunk: nn.Module, trunk_dim: int, tasks: Sequence[Task], head_hidden: Sequence[int] = ()):
        super().__init__(tasks)
        self.trunk = trunk
        self.heads = nn.ModuleDict({t.name: mlp(trunk_dim, head_hidden, t.output_dim) for t in tasks})

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        z = self.trunk(x)
        return {t: self.heads[t](z) for t in names}

    def group_of(self, param_name: str) -> str:
        if param_name.startswith("heads."):
            return task_group(param_name.split(".")[1])
        return SHARED
