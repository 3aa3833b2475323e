"""Distillation from a shared teacher (Teh et al., "Distral: Robust Multitask Reinforcement Learning", NeurIPS 2017; Hinton et al., 2015).

A shared multi-task *teacher* (trunk + heads, all ``shared``) and one *student* per task
(``task:<t>``). Predictions are the students'. The penalty couples them both ways, as in Distral:
``alpha sum_t [D(teacher_t.detach() || student_t) + D(student_t.detach() || teacher_t)]``, where ``D`` is the
temperature-``T`` KL divergence (times ``T^2``) for multiclass, the Bernoulli KL for binary, and the
squared error for regression. So students are regularised towards the shared teacher, and the
teacher is distilled from all the students (the only signal it gets), and is what the federation
shares. The penalty uses the last forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.mtl.models.trunks import build_trunk, mlp
from fedmtl.registry import register
from fedmtl.tasks import Task


def divergence(task: Task, target: Tensor, pred: Tensor, temperature: float) -> Tensor:
    """``D(target || pred)`` on raw outputs (logits for classification)."""
    if task.kind == "multiclass":
        p = F.log_softmax(target / temperature, -1)
        q = F.log_softmax(pred / temperature, -1)
        return F.kl_div(q, p, log_target=True, reduction="batchmean") * temperature**2
    if task.kind == "binary":
        p = torch.sigmoid(target / temperature)
        return F.binary_cross_entropy_with_logits(pred / temperature, p) * temperature**2 - F.binary_cross_entropy_with_logits(target / temperature, p) * temperature**2
    return F.mse_loss(pred, target)


class DistillationModel(MultiTaskModel):
    """Per-task students regularised towards (and distilled into) a shared multi-task teacher."""

    penalty_reads_forward = True

    task_modules = ("students", "student_heads")

    def __init__(self, make_trunk: Callable[[], tuple[nn.Module, int]], tasks: Sequence[Task], strength: float = 0.5, temperature: float = 2.0):
        super().__init__(tasks)
        if strength < 0 or temperature <= 0:
            raise ValueError(f"need strength >= 0 and temperature > 0, got {strength}, {temperature}")
        self.strength, self.temperature = strength, temperature
        trunk, dim = make_trunk()
        self.teacher_trunk = trunk
        self.teacher_heads = nn.ModuleDict({t.name: nn.Linear(dim, t.output_dim) for t in tasks})
        students, heads = {}, {}
        for t in tasks:
            s, d = make_trunk()
            students[t.name] = s
            heads[t.name] = mlp(d, (), t.output_dim)
        self.students = nn.ModuleDict(students)
        self.student_heads = nn.ModuleDict(heads)
        self._last: dict[str, tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        z = self.teacher_trunk(x)
        out, last = {}, {}
        for t in names:
            s = self.student_heads[t](self.students[t](x))
            last[t] = (self.teacher_heads[t](z), s)
            out[t] = s
        self._last = last if torch.is_grad_enabled() else {}
        return out

    def teacher(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The shared teacher's predictions."""
        z = self.teacher_trunk(x)
        return {t: self.teacher_heads[t](z) for t in check_tasks(self, tasks)}

    def penalty(self) -> Tensor | None:
        if not self._last or self.strength == 0:
            return None
        total: Tensor = torch.zeros(())
        for t, (teach, stud) in self._last.items():
            task = self.tasks[t]
            total = total + divergence(task, teach.detach(), stud, self.temperature) + divergence(task, stud.detach(), teach, self.temperature)
        return self.strength * total

register(
    "model",
    "distillation",
    lambda cfg, shape, tasks: DistillationModel(lambda: build_trunk(cfg.trunk, shape), tasks, cfg.strength, cfg.temperature),
    model_cfg.Distillation,
)
