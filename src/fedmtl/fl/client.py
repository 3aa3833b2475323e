"""Local training on one client: E epochs of minibatches from the current global model.

This is the sequential reference implementation; other engines must reproduce its results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedmtl.config.mtl import MTLConfig
from fedmtl.config.privacy import DPSGDConfig
from fedmtl.config.training import SGD, Adam, ClientConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.batching import batch_plan
from fedmtl.mtl import LOCAL, SHARED, MultiTaskModel, build_objective, task_group
from fedmtl.mtl.objective import MultiTaskObjective
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


@dataclass(frozen=True)
class Prox:
    """A pull of some parameters towards ``center`` by ``weight / 2 * ||w - center||^2``.

    ``implicit=False`` adds the penalty's gradient ``weight * (w - center)`` to each step's gradient
    (FedProx, Li et al. 2020). ``implicit=True`` takes the proximal step after the optimiser's step,
    ``w <- (w + lr * weight * center) / (1 + lr * weight)``: the same objective, stable for any weight
    (so ``weight -> inf`` pins ``w`` to ``center``); Ditto and MOCHA use it.
    """

    center: Mapping[str, Tensor]
    #: one weight for every parameter, or a weight per parameter name (MOCHA)
    weight: float | Mapping[str, float]
    implicit: bool = False

    def __post_init__(self) -> None:
        weights = self.weight.values() if isinstance(self.weight, Mapping) else [self.weight]
        bad = [w for w in weights if not w >= 0]
        if bad:
            raise ValueError(f"proximal weight must be >= 0, got {bad[0]}")

    def weight_of(self, name: str) -> float:
        return float(self.weight[name]) if isinstance(self.weight, Mapping) else float(self.weight)


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


def norm_buffer_names(model: torch.nn.Module) -> list[str]:
    """The running statistics of the model's BatchNorm layers (``running_mean``, ``running_var``, ``num_batches_tracked``).

    They are client state, never federated: each client trains and evaluates with its own (FedBN).
    """
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out += [f"{prefix}.{n}" if prefix else n for n, b in module.named_buffers(recurse=False) if b is not None]
    return out


def default_buffers(model: torch.nn.Module) -> dict[str, Tensor]:
    """Freshly initialised running statistics (mean 0, variance 1, no batches seen): a client's before it trains."""
    out: dict[str, Tensor] = {}
    buffers = dict(model.named_buffers())
    for n in norm_buffer_names(model):
        b = buffers[n]
        out[n] = torch.ones_like(b) if n.endswith("running_var") else torch.zeros_like(b)
    return out


def client_buffers(model: torch.nn.Module, state: Mapping[str, object]) -> dict[str, Tensor]:
    """The running statistics a client uses: its own (``state["buffers"]``), else the initial ones."""
    return {**default_buffers(model), **state.get("buffers", {})}  # type: ignore[dict-item]


def load_buffers(model: torch.nn.Module, values: Mapping[str, Tensor]) -> None:
    """Copy values into the model's buffers in place."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, v in values.items():
            buffers[name].copy_(v)


def mean_buffers(model: torch.nn.Module, states: Sequence[Mapping[str, object]]) -> dict[str, Tensor]:
    """The mean of the clients' running statistics (``num_batches_tracked`` summed); the initial ones if none has any."""
    own = [s["buffers"] for s in states if s.get("buffers")]
    out = default_buffers(model)
    if not own:
        return out
    for n in out:
        stacked = torch.stack([b[n] for b in own])  # type: ignore[index]
        out[n] = stacked.sum(0) if n.endswith("num_batches_tracked") else stacked.float().mean(0).to(out[n].dtype)
    return out


def make_optimizer(cfg: SGD | Adam, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if isinstance(cfg, SGD):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def _add_grad(named: Mapping[str, torch.nn.Parameter], names: Sequence[str], term) -> None:  # type: ignore[no-untyped-def]
    for n in names:
        p = named[n]
        extra = term(n).to(p)
        p.grad = extra.clone() if p.grad is None else p.grad + extra


def finish_local(
    model: MultiTaskModel, names: Sequence[str], loss_sums: Mapping[str, Tensor | float], steps: int, state: TensorTree
) -> LocalResult:
    """The result of local training: trained values, mean losses, and the next state (with local parameters)."""
    named = dict(model.named_parameters())
    trained = {n: named[n].detach().clone() for n in names}
    metrics = {f"loss/{t}": float(s) / max(steps, 1) for t, s in loss_sums.items()}
    metrics["steps"] = float(steps)
    new_state = dict(state)
    local = {n: v for n, v in trained.items() if model.group_of(n) == LOCAL}
    if local:
        new_state["local"] = local
    bn = norm_buffer_names(model)
    if bn:  # the client's own running statistics (FedBN): persisted, never uploaded
        buffers = dict(model.named_buffers())
        new_state["buffers"] = {n: buffers[n].detach().clone() for n in bn}
    return LocalResult(trained, metrics, new_state)


class LocalTrainer:
    """Trains a model (one reused instance) on one client at a time."""

    def __init__(self, model: MultiTaskModel, client_cfg: ClientConfig, mtl_cfg: MTLConfig, dp_sgd: DPSGDConfig | None = None):
        self.model = model
        self.cfg = client_cfg
        self.mtl_cfg = mtl_cfg
        #: sample-level DP-SGD settings; when set, :meth:`train` clips and noises each example's gradient
        self.dp_sgd = dp_sgd

    def grads(
        self,
        params: Mapping[str, Tensor],
        client: ClientData,
        idx: Tensor,
        objective: MultiTaskObjective,
        ostate: TensorTree,
        generator: torch.Generator,
        epoch: int = 0,
        weights: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Tensor, TensorTree]:
        """One minibatch's gradients of the balanced objective at ``params`` (for methods that keep several
        parameter sets and step them themselves: APFL, pFedMe, FedEM).

        Args:
            params: the parameter set (every parameter it names receives a gradient, zeros where unused).
            idx: the minibatch's rows of ``client.train``.
            objective: the client's objective; ``ostate`` its state before the step.
            weights: optional per-row weights of the task losses (FedEM's responsibilities).

        Returns:
            The gradients, the plain sum of the task losses (detached), and the objective state after the step.
        """
        model = self.model
        tasks = list(client.tasks)
        load_parameters(model, params)
        model.train()
        model.zero_grad(set_to_none=True)
        preds = model(client.train.x[idx], tasks)
        losses = {}
        for t in tasks:
            losses[t] = model.tasks[t].loss(preds[t], client.train.y[t][idx], weights=weights)
        ostate, _ = objective.backward(model, losses, ostate, generator=generator, epoch=epoch, want_log=False)
        named = dict(model.named_parameters())
        out = {}
        for n, v in params.items():
            g = named[n].grad
            out[n] = g.detach().clone() if g is not None else torch.zeros_like(v)
        return out, torch.stack([v.detach() for v in losses.values()]).sum(), ostate

    def train(
        self,
        start: Mapping[str, Tensor],
        client: ClientData,
        state: TensorTree,
        generator: torch.Generator,
        *,
        prox: Prox | None = None,
        grad_offset: Mapping[str, Tensor] | None = None,
        trainable: Sequence[str] | None = None,
        epochs: int | None = None,
    ) -> LocalResult:
        """Train from ``start`` (the global parameters the client received) on the client's own tasks.

        The keyword options serve client-side algorithms (FedAvg uses none of them):

        Args:
            prox: a proximal pull towards a centre (FedProx, Ditto, MOCHA).
            grad_offset: a constant added to each step's gradient after clipping (SCAFFOLD's ``c - c_i``).
            trainable: train only these parameters (the others stay at their start; FedRep's phases).
            epochs: local epochs instead of ``client.epochs``.
        """
        if self.dp_sgd is not None:
            from fedmtl.fl.dp_sgd_client import refuse_changed_steps, train_with_dp_sgd

            refuse_changed_steps(prox, grad_offset, trainable, epochs)
            return train_with_dp_sgd(self, start, client, state, generator, self.dp_sgd)
        model = self.model
        tasks = list(client.tasks)
        names = held_parameter_names(model, tasks)
        # every parameter the start names, held or not: a penalty over all tasks (soft sharing, MTRL) must see
        # the received values, never what the shared model instance kept from the previous client
        known = dict(model.named_parameters())
        load_parameters(model, {n: v for n, v in start.items() if n in known})
        local_saved = state.get("local", {})
        if local_saved:
            load_parameters(model, local_saved)  # type: ignore[arg-type]
        has_bn = bool(norm_buffer_names(model))
        if has_bn:  # the one model instance serves every client: never train on another client's statistics
            load_buffers(model, client_buffers(model, state))
        named = dict(model.named_parameters())
        stepped = names if trainable is None else [n for n in names if n in set(trainable)]
        params = [named[n] for n in stepped]
        opt = make_optimizer(self.cfg.optimizer, params)
        objective = build_objective(self.mtl_cfg, tasks)
        ostate = state.get("objective") or objective.init()
        loss_sums: dict[str, Tensor | float] = dict.fromkeys(tasks, 0.0)
        steps = 0
        model.train()
        x_all, y_all = client.train.x, client.train.y
        plan = batch_plan(len(client.train), self.cfg.batch_size, epochs or self.cfg.epochs, generator)
        pulled = [n for n in stepped if prox is not None and n in prox.center]
        offset = [n for n in stepped if grad_offset is not None and n in grad_offset]
        for epoch, batches in enumerate(plan):
            for idx in batches:
                if has_bn and len(idx) < 2:
                    continue  # BatchNorm cannot normalise a single row in training mode
                preds = model(x_all[idx], tasks)
                losses = {t: model.tasks[t].loss(preds[t], y_all[t][idx]) for t in tasks}
                opt.zero_grad(set_to_none=True)
                ostate, _ = objective.backward(model, losses, ostate, generator=generator, epoch=epoch, want_log=False)
                if prox is not None and not prox.implicit:
                    _add_grad(named, pulled, lambda n: prox.weight_of(n) * (named[n].detach() - prox.center[n]))
                if self.cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                if grad_offset is not None:
                    _add_grad(named, offset, lambda n: grad_offset[n])
                opt.step()
                if prox is not None and prox.implicit and pulled:
                    with torch.no_grad():
                        for n in pulled:
                            shrink = self.cfg.optimizer.lr * prox.weight_of(n)
                            named[n].add_(prox.center[n], alpha=shrink).div_(1.0 + shrink)
                for t in tasks:
                    loss_sums[t] += losses[t].detach()  # a tensor sum: no device sync per step
                steps += 1
        return finish_local(model, names, loss_sums, steps, {"objective": ostate})  # type: ignore[dict-item]
