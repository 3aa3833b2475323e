"""Multi-task relationship learning (Zhang & Yeung, "A Convex Formulation for Learning Task Relationships", UAI 2010).

A shared trunk, then per task an adapter ``A_t`` of one common shape and an output layer. With
``W = [vec(A_1), ..., vec(A_T)]`` the penalty is ``lambda tr(W Omega^{-1} W^T)`` and the task covariance
has the closed-form minimiser ``Omega = (W^T W)^{1/2} / tr((W^T W)^{1/2})``; it is refreshed from the
current (detached) adapters at every penalty evaluation (alternating minimisation) and kept as a
buffer (``model.omega``) for inspection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.mtl.models.trunks import build_trunk
from fedmtl.registry import register
from fedmtl.tasks import Task


def closed_form_omega(w: Tensor, eps: float = 1e-8) -> Tensor:
    """``(W^T W)^{1/2} / tr((W^T W)^{1/2})`` for ``W`` of shape ``[D, T]`` (symmetric square root by eigh)."""
    evals, evecs = torch.linalg.eigh(w.T @ w)
    root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    return root / root.trace().clamp_min(eps)


class MTRLModel(MultiTaskModel):
    """Shared trunk, task adapters coupled through a learned task covariance ``Omega``."""

    task_modules = ("adapters", "heads")

    def __init__(self, trunk: nn.Module, trunk_dim: int, tasks: Sequence[Task], adapter_dim: int = 32, strength: float = 1e-3, eps: float = 1e-4):
        super().__init__(tasks)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength, self.eps = strength, eps
        self.trunk = trunk
        self.adapters = nn.ModuleDict({t.name: nn.Linear(trunk_dim, adapter_dim) for t in tasks})
        self.heads = nn.ModuleDict({t.name: nn.Linear(adapter_dim, t.output_dim) for t in tasks})
        n = len(tasks)
        self.omega: Tensor
        self.register_buffer("omega", torch.eye(n) / n)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {t: self.heads[t](torch.relu(self.adapters[t](z))) for t in check_tasks(self, tasks)}

    def task_matrix(self) -> Tensor:
        """``W``: one column per task, the flattened adapter weights, ``[D, T]``."""
        return torch.stack([self.adapters[t].weight.reshape(-1) for t in self.task_names], dim=1)  # type: ignore[union-attr,operator]

    def update_omega(self) -> Tensor:
        """Refresh ``Omega`` in closed form from the current adapters; returns it."""
        with torch.no_grad():
            self.omega.copy_(closed_form_omega(self.task_matrix()))
        return self.omega

    def penalty(self) -> Tensor | None:
        if self.strength == 0 or len(self.tasks) < 2:
            return None
        omega = self.update_omega()
        inv = torch.linalg.inv(omega + self.eps * torch.eye(len(omega)))
        w = self.task_matrix()
        return self.strength * torch.trace(w @ inv @ w.T)

def _mtrl(cfg: model_cfg.MTRL, shape: Sequence[int], tasks: Sequence[Task]) -> MTRLModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return MTRLModel(trunk, dim, tasks, cfg.adapter_dim, cfg.strength)


register("model", "mtrl", _mtrl, model_cfg.MTRL)
