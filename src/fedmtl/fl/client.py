"""Local training on one client: E epochs of minibatches from the current global model.

This is the sequential reference implementation; other engines must reproduce its results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedmtl.config.mtl import MTLConfig
from fedmtl.config.privacy import DPSGDConfig
from fedmtl.config.training import SGD, Adam, ClientConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.batching import batch_plan
from fedmtl.mtl import LOCAL, SHARED, MultiTaskModel, build_objective, task_group
from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class LocalResult:
    """What local training produced.

    Attributes:
        params: the trained values of every parameter this client holds (shared, its task heads, local).
        metrics: mean training loss per task (``loss/<task>``) and the number of steps.
        state: the client's persistent state for its next participation (objective state, local parameters).
    """

    params: dict[str, Tensor]
    metrics: dict[str, float]
    state: TensorTree = field(default_factory=dict)


def held_parameter_names(model: MultiTaskModel, tasks: tuple[str, ...] | list[str]) -> list[str]:
    """The parameters a client with these tasks trains: shared, its tasks' own, and local ones."""
    keep = {SHARED, LOCAL} | {task_group(t) for t in tasks}
    return [n for n, _ in model.named_parameters() if model.group_of(n) in keep]


def load_parameters(model: MultiTaskModel, values: Mapping[str, Tensor]) -> None:
    """Copy values into the model's parameters in place (no new tensors, no autograd history)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, v in values.items():
            params[name].copy_(v)


def make_optimizer(cfg: SGD | Adam, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if isinstance(cfg, SGD):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


class LocalTrainer:
    """Trains a model (one reused instance) on one client at a time."""

    def __init__(self, model: MultiTaskModel, client_cfg: ClientConfig, mtl_cfg: MTLConfig, dp_sgd: DPSGDConfig | None = None):
        self.model = model
        self.cfg = client_cfg
        self.mtl_cfg = mtl_cfg
        #: sample-level DP-SGD settings; when set, :meth:`train` runs through Opacus
        self.dp_sgd = dp_sgd

    def train(
        self, start: Mapping[str, Tensor], client: ClientData, state: TensorTree, generator: torch.Generator
    ) -> LocalResult:
        """Train from ``start`` (the global parameters the client received) on the client's own tasks."""
        if self.dp_sgd is not None:
            from fedmtl.fl.dp_sgd_client import train_with_dp_sgd

            return train_with_dp_sgd(self, start, client, state, generator, self.dp_sgd)
        model = self.model
        tasks = list(client.tasks)
        names = held_parameter_names(model, tasks)
        load_parameters(model, {n: start[n] for n in names if n in start})
        local_saved = state.get("local", {})
        if local_saved:
            load_parameters(model, local_saved)  # type: ignore[arg-type]
        named = dict(model.named_parameters())
        params = [named[n] for n in names]
        opt = make_optimizer(self.cfg.optimizer, params)
        objective = build_objective(self.mtl_cfg, tasks)
        ostate = state.get("objective") or objective.init()
        loss_sums = dict.fromkeys(tasks, 0.0)
        steps = 0
        model.train()
        x_all, y_all = client.train.x, client.train.y
        plan = batch_plan(len(client.train), self.cfg.batch_size, self.cfg.epochs, generator)
        for epoch, batches in enumerate(plan):
            for idx in batches:
                preds = model(x_all[idx], tasks)
                losses = {t: model.tasks[t].loss(preds[t], y_all[t][idx]) for t in tasks}
                opt.zero_grad(set_to_none=True)
                ostate, _ = objective.backward(model, losses, ostate, generator=generator, epoch=epoch)  # type: ignore[arg-type]
                if self.cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                opt.step()
                for t in tasks:
                    loss_sums[t] += float(losses[t].detach())
                steps += 1
        trained = {n: named[n].detach().clone() for n in names}
        metrics = {f"loss/{t}": s / max(steps, 1) for t, s in loss_sums.items()}
        metrics["steps"] = float(steps)
        new_state: TensorTree = {"objective": ostate}  # type: ignore[dict-item]
        local = {n: v for n, v in trained.items() if model.group_of(n) == LOCAL}
        if local:
            new_state["local"] = local  # type: ignore[assignment]
        return LocalResult(trained, metrics, new_state)
