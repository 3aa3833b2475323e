"""The local multi-task objective: task losses in, gradients on the model's parameters out.

This is the training step that owns autograd. A joint-optimisation scheme decides which tasks
take part in a step and with which extra weights; the balancer turns the losses (and, when it asks
for them, per-task gradients of the shared parameters) into loss weights or a shared direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedmtl.mtl.balancers.base import Balance, BalanceInput, Balancer
from fedmtl.mtl.models.base import MultiTaskModel
from fedmtl.tree import TensorTree


def per_task_shared_grads(losses: Sequence[Tensor], shared: Sequence[torch.nn.Parameter]) -> Tensor:
    """Gradients of each task loss w.r.t. the shared parameters, flattened: ``[T, P]``.

    One reverse pass per task (the graph is kept): the rows of the Jacobian.
    """
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, shared)]))
    return torch.stack(rows)


def _assign_flat(params: Sequence[torch.nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


class MultiTaskObjective:
    """Weighted-sum joint optimisation driven by a :class:`Balancer`.

    ``tasks`` is the task order the balancer's weights refer to (a client's own tasks).
    """

    def __init__(self, balancer: Balancer, tasks: Sequence[str]):
        if not tasks:
            raise ValueError("an objective needs at least one task")
        self.balancer = balancer
        self.tasks = list(tasks)

    def init(self) -> TensorTree:
        return {"balancer": self.balancer.init(len(self.tasks)), "step": torch.zeros((), dtype=torch.long)}

    def backward(
        self,
        model: MultiTaskModel,
        losses: Mapping[str, Tensor],
        state: TensorTree,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> tuple[TensorTree, dict[str, float]]:
        """Accumulate this step's gradients into ``.grad`` and return the next state and a log.

        Args:
            model: the model whose parameters receive gradients.
            losses: task name -> scalar loss of this minibatch (graph attached).
            state: the objective's state (balancer state, step counter).
            generator: randomness for stochastic balancers.
            epoch: the local epoch (schemes that alternate per epoch use it).
        """
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"objective expects losses for {missing}; got {sorted(losses)}")
        loss_vec = torch.stack([losses[t] for t in self.tasks])
        step = int(state["step"])  # type: ignore[arg-type]
        shared = model.shared_parameters()
        grads = None
        if self.balancer.requires == "shared_grads":
            grads = per_task_shared_grads(list(loss_vec), shared)
        balance, bstate = self.balancer(
            BalanceInput(losses=loss_vec.detach(), grads=grads, step=step, generator=generator),
            state["balancer"],  # type: ignore[arg-type]
        )
        self._apply(model, loss_vec, balance, shared)
        log = {f"weight/{t}": float(w) for t, w in zip(self.tasks, balance.weights)}
        return {"balancer": bstate, "step": torch.tensor(step + 1)}, log

    def _apply(self, model: MultiTaskModel, loss_vec: Tensor, balance: Balance, shared: list[torch.nn.Parameter]) -> None:
        total = (balance.weights.to(loss_vec) * loss_vec).sum()
        if balance.shared_direction is None:
            total.backward()
            return
        task_params = [p for ps in model.task_parameters().values() for p in ps]
        if task_params:
            gs = torch.autograd.grad(total, task_params, allow_unused=True)
            for p, g in zip(task_params, gs):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        _assign_flat(shared, balance.shared_direction.detach())
