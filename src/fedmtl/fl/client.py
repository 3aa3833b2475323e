"""Local training on one client: E epochs of minibatches from the current global model.

This is the sequential reference implementation; other engines must reproduce its results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmtl.config.mtl import MTLConfig
from fedmtl.config.privacy import DPSGDConfig
from fedmtl.config.training import ClientConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.dp_sgd_client import refuse_changed_steps, train_with_dp_sgd
from fedmtl.fl.functional_optimizer import FunctionalOptimizer
from fedmtl.fl.local_parts import (  # re-exported: fedmtl.fl.client is where callers find them
    LocalResult,
    client_buffers,
    default_buffers,
    finish_local,
    held_parameter_names,
    load_buffers,
    load_parameters,
    mean_buffers,
    norm_buffer_names,
)
from fedmtl.mtl import MultiTaskModel, build_objective
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.tree import TensorTree

__all__ = [
    "LocalResult",
    "LocalTrainer",
    "Prox",
    "TrainRequest",
    "client_buffers",
    "default_buffers",
    "finish_local",
    "held_parameter_names",
    "load_buffers",
    "load_parameters",
    "mean_buffers",
    "norm_buffer_names",
]


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


@dataclass(frozen=True)
class TrainRequest:
    """The arguments of one :meth:`LocalTrainer.train` call (several go to :meth:`LocalTrainer.train_each`)."""

    start: Mapping[str, Tensor]
    client: ClientData
    state: ClientState
    generator: torch.Generator
    prox: Prox | None = None
    grad_offset: Mapping[str, Tensor] | None = None
    trainable: Sequence[str] | None = None
    epochs: int | None = None


def _add_grad(named: Mapping[str, torch.nn.Parameter], names: Sequence[str], term) -> None:  # type: ignore[no-untyped-def]
    for n in names:
        p = named[n]
        extra = term(n).to(p)
        p.grad = extra.clone() if p.grad is None else p.grad + extra


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

    def train_each(self, requests: Sequence[TrainRequest]) -> list[LocalResult]:
        """Several trainings of which none reads another's result (Ditto's global and personal models): each
        request's :meth:`train`, in order. An engine that batches clients trains them in one computation, so
        an algorithm with independent trainings asks for them together.
        """
        return [
            self.train(r.start, r.client, r.state, r.generator, prox=r.prox, grad_offset=r.grad_offset, trainable=r.trainable, epochs=r.epochs)
            for r in requests
        ]

    def train(
        self,
        start: Mapping[str, Tensor],
        client: ClientData,
        state: ClientState,
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
            refuse_changed_steps(prox, grad_offset, trainable, epochs)
            return train_with_dp_sgd(self, start, client, state, generator, self.dp_sgd)
        model = self.model
        tasks = list(client.tasks)
        names = held_parameter_names(model, tasks)
        # every parameter the start names, held or not: a penalty over all tasks (soft sharing, MTRL) must see
        # the received values, never what the shared model instance kept from the previous client
        known = dict(model.named_parameters())
        load_parameters(model, {n: v for n, v in start.items() if n in known})
        if state.local:
            load_parameters(model, state.local)
        has_bn = bool(norm_buffer_names(model))
        if has_bn:  # the one model instance serves every client: never train on another client's statistics
            load_buffers(model, client_buffers(model, state))
        named = dict(model.named_parameters())
        stepped = names if trainable is None else [n for n in names if n in set(trainable)]
        params = [named[n] for n in stepped]
        opt = FunctionalOptimizer(self.cfg.optimizer)
        objective = build_objective(self.mtl_cfg, tasks)
        ostate = state.objective or objective.init()
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
                for p in params:
                    p.grad = None
                ostate, _ = objective.backward(model, losses, ostate, generator=generator, epoch=epoch, want_log=False)
                if prox is not None and not prox.implicit:
                    _add_grad(named, pulled, lambda n: prox.weight_of(n) * (named[n].detach() - prox.center[n]))
                if self.cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                if grad_offset is not None:
                    _add_grad(named, offset, lambda n: grad_offset[n])
                opt.step(named, {n: g for n in stepped if (g := named[n].grad) is not None})
                if prox is not None and prox.implicit and pulled:
                    with torch.no_grad():
                        for n in pulled:
                            shrink = self.cfg.optimizer.lr * prox.weight_of(n)
                            named[n].add_(prox.center[n], alpha=shrink).div_(1.0 + shrink)
                for t in tasks:
                    loss_sums[t] += losses[t].detach()  # a tensor sum: no device sync per step
                steps += 1
        return finish_local(model, names, loss_sums, steps, ClientState(objective=ostate))
