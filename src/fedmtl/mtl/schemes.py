"""Joint-optimisation schemes: which tasks take part in a step, and with which weights.

A scheme either defers to the balancer (weighted sum) or fixes the step's loss weights itself
(alternating, Lagrangian). Like balancers, schemes keep explicit tensor-tree state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

from fedmtl.config import mtl as mtl_cfg
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class Scheme(Protocol):
    """``weights`` returns fixed loss weights ``[T]`` (or ``None`` to let the balancer decide), the next state and a log."""

    def init(self, tasks: Sequence[str]) -> TensorTree: ...

    def weights(self, losses: Tensor, state: TensorTree, step: int, epoch: int) -> tuple[Tensor | None, TensorTree, dict[str, float]]: ...


class WeightedSum:
    """``sum_t w_t f_t`` with weights from the balancer (``static`` gives fixed ``lambda_t``)."""

    def init(self, tasks: Sequence[str]) -> TensorTree:
        return {}

    def weights(self, losses: Tensor, state: TensorTree, step: int, epoch: int) -> tuple[Tensor | None, TensorTree, dict[str, float]]:
        return None, state, {}


class Alternating:
    """One task at a time, in turn, switching every step or every epoch.

    Only the active task's loss enters the graph, so the other tasks' heads receive no gradient
    (``.grad`` stays ``None``, which torch optimisers skip) and the shared parameters follow the
    active task.
    """

    def __init__(self, tasks: Sequence[str], every: Literal["step", "epoch"] = "step"):
        if every not in ("step", "epoch"):
            raise ValueError(f"every must be 'step' or 'epoch', got {every!r}")
        self.tasks = list(tasks)
        self.every = every

    def init(self, tasks: Sequence[str]) -> TensorTree:
        return {}

    def active(self, step: int, epoch: int) -> int:
        return (step if self.every == "step" else epoch) % len(self.tasks)

    def weights(self, losses: Tensor, state: TensorTree, step: int, epoch: int) -> tuple[Tensor | None, TensorTree, dict[str, float]]:
        k = self.active(step, epoch)
        w = torch.zeros_like(losses)
        w[k] = 1.0
        return w, state, {"active_task": float(k)}


class Lagrangian:
    """Minimise a main task's loss subject to ``f_t <= eps_t``; multipliers by projected dual ascent.

    Step objective ``f_main + sum_t lambda_t (f_t - eps_t)``; after it,
    ``lambda_t <- max(0, lambda_t + eta (f_t - eps_t))`` (Arrow-Hurwicz / primal-dual gradient).
    Tasks neither main nor constrained get weight 0. A client that does not hold the main task
    optimises only the constraint terms it holds. Multipliers and violations are logged each step.
    """

    def __init__(self, tasks: Sequence[str], main: str, constraints: Mapping[str, float], dual_lr: float = 0.1, init_multiplier: float = 0.0):
        if dual_lr <= 0:
            raise ValueError(f"dual_lr must be > 0, got {dual_lr}")
        if init_multiplier < 0:
            raise ValueError(f"init_multiplier must be >= 0, got {init_multiplier}")
        if main in constraints:
            raise ValueError(f"the main task {main!r} cannot also be constrained")
        self.tasks = list(tasks)
        self.main = main
        self.eps = torch.tensor([float(constraints.get(t, 0.0)) for t in self.tasks])
        self.constrained = torch.tensor([t in constraints for t in self.tasks])
        self.dual_lr = dual_lr
        self.init_multiplier = init_multiplier

    def init(self, tasks: Sequence[str]) -> TensorTree:
        return {"multipliers": self.constrained.float() * self.init_multiplier}

    def weights(self, losses: Tensor, state: TensorTree, step: int, epoch: int) -> tuple[Tensor | None, TensorTree, dict[str, float]]:
        lam = state["multipliers"]
        assert isinstance(lam, Tensor)
        w = lam.clone()
        if self.main in self.tasks:
            w[self.tasks.index(self.main)] = 1.0
        viol = losses.detach().float().cpu() - self.eps
        new = torch.where(self.constrained, (lam + self.dual_lr * viol).clamp_min(0.0), torch.zeros_like(viol))
        log: dict[str, float] = {}
        for i, t in enumerate(self.tasks):
            if bool(self.constrained[i]):
                log[f"multiplier/{t}"] = float(lam[i])
                log[f"violation/{t}"] = float(viol[i])
        return w.to(losses), {"multipliers": new}, log


register("scheme", "weighted_sum", lambda cfg, tasks: WeightedSum(), mtl_cfg.WeightedSum)
register("scheme", "alternating", lambda cfg, tasks: Alternating(tasks, cfg.every), mtl_cfg.Alternating)
register(
    "scheme",
    "lagrangian",
    lambda cfg, tasks: Lagrangian(tasks, cfg.main, cfg.constraints, cfg.dual_lr, cfg.init_multiplier),
    mtl_cfg.Lagrangian,
)
