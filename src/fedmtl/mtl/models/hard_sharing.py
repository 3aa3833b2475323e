"""Hard parameter sharing: one shared trunk, one head (or tower) per task (Caruana, 1997).

With deeper task towers (``head_hidden``) this is the "shared encoder feeding task towers" form of
feature sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.mtl.models.trunks import build_trunk, mlp
from fedmtl.registry import register
from fedmtl.tasks import Task


class HardSharingModel(MultiTaskModel):
    """``trunk`` -> representation -> ``heads[task]`` -> prediction."""

    task_modules = ("heads",)

    def __init__(self, trunk: nn.Module, trunk_dim: int, tasks: Sequence[Task], head_hidden: Sequence[int] = ()):
        super().__init__(tasks)
        self.trunk = trunk
        self.heads = nn.ModuleDict({t.name: mlp(trunk_dim, head_hidden, t.output_dim) for t in tasks})
        self._rep: Tensor | None = None
        self._task_reps: dict[str, Tensor] | None = None

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        z = self.trunk(x)
        if not z.requires_grad:
            self._rep = self._task_reps = None
            return {t: self.heads[t](z) for t in names}
        self._rep = z
        self._task_reps = {t: z.view_as(z) for t in names}  # distinct graph nodes, same storage
        return {t: self.heads[t](self._task_reps[t]) for t in names}

    def shared_representation(self) -> Tensor | None:
        return self._rep

    def task_representations(self) -> dict[str, Tensor] | None:
        return self._task_reps

def _hard_sharing(cfg: model_cfg.HardSharing, shape: Sequence[int], tasks: Sequence[Task]) -> HardSharingModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return HardSharingModel(trunk, dim, tasks, cfg.head_hidden)


def _shared_encoder(cfg: model_cfg.SharedEncoder, shape: Sequence[int], tasks: Sequence[Task]) -> HardSharingModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return HardSharingModel(trunk, dim, tasks, cfg.tower_hidden)


register("model", "hard_sharing", _hard_sharing, model_cfg.HardSharing)
register("model", "shared_encoder", _shared_encoder, model_cfg.SharedEncoder)
