"""Helpers shared by the personalisation methods: forked randomness, functional losses, cluster averaging."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from fedmtl.data.dataset import ClientData, Split
from fedmtl.fl.aggregation import aggregate_by_group
from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL, MultiTaskModel, build_objective
from fedmtl.tree import TensorTree


def fork(generator: torch.Generator) -> torch.Generator:
    """A new generator seeded by one draw from ``generator`` (a second, independent stream)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed)


class LocalObjective:
    """The client's configured multi-task objective (``mtl.scheme`` and ``mtl.balancer``) for methods that
    keep several parameter sets of their own (APFL's ``w`` and ``v``, pFedMe's ``theta``, FedEM's components).

    :meth:`grads` loads a parameter set into the shared model instance, takes one minibatch's per-task
    losses (optionally per-sample weighted: FedEM's responsibilities) and lets the objective balance them
    exactly as :class:`~fedmtl.fl.client.LocalTrainer` does, so any balancer (gradient balancers included)
    and any scheme works. Each parameter set keeps its own objective state across rounds (``state``: its
    state before, None or empty on the first round; :attr:`state` after).
    """

    def __init__(self, trainer: LocalTrainer, client: ClientData, state: TensorTree | None):
        self.trainer = trainer
        self.model = trainer.model
        self.client = client
        self.tasks = list(client.tasks)
        self.split = client.train
        self.objective = build_objective(trainer.mtl_cfg, self.tasks)
        self.state: TensorTree = state or self.objective.init()

    def grads(
        self, params: Mapping[str, Tensor], idx: Tensor, generator: torch.Generator, epoch: int = 0, weights: Tensor | None = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Gradients of the balanced objective at ``params`` on minibatch ``idx``, and the plain sum of task losses.

        The trainer computes them (:meth:`LocalTrainer.grads`), so an engine that batches clients batches these too.
        """
        out, loss, self.state = self.trainer.grads(params, self.client, idx, self.objective, self.state, generator, epoch, weights)
        return out, loss


def client_loss(model: MultiTaskModel, params: Mapping[str, Tensor], split: Split, tasks: Sequence[str], idx: Tensor | None = None, per_sample: bool = False) -> Tensor:
    """Sum over ``tasks`` of the task losses of ``params`` (a functional call, the model is not touched).

    Unweighted on purpose: it scores models (IFCA's choice of cluster, FedEM's E-step likelihoods), it
    does not train them; training goes through :class:`LocalObjective`.
    """
    x = split.x if idx is None else split.x[idx]
    preds = functional_call(model, dict(params), (x, list(tasks)))
    reduction = "none" if per_sample else "mean"
    total: Tensor | None = None
    for t in tasks:
        y = split.y[t] if idx is None else split.y[t][idx]
        loss = model.tasks[t].loss(preds[t], y, reduction=reduction).reshape(-1 if per_sample else ())
        total = loss if total is None else total + loss
    assert total is not None
    return total


def shuffled(params: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Each tensor's entries permuted: a fresh draw from the same i.i.d. initialisation (symmetry breaking)."""
    return {n: p.reshape(-1)[torch.randperm(p.numel(), generator=generator)].view_as(p).clone() for n, p in params.items()}


def average_members(
    model_params: Mapping[str, Tensor], members: Sequence[tuple[ClientUpdate, Mapping[str, Tensor]]], groups: Mapping[str, Sequence[str]]
) -> dict[str, Tensor]:
    """A cluster / component model moved to its members' weighted mean, per parameter group.

    Args:
        model_params: the model's current values.
        members: (the member's update, for its weights; the member's trained values).
        groups: parameter group -> names; each group is averaged over the members that hold it.
    """
    if not members:
        return dict(model_params)
    ups = [
        ClientUpdate(u.client_id, {n: v - model_params[n] for n, v in trained.items()}, u.num_samples, u.task_samples)
        for u, trained in members
    ]
    agg = aggregate_by_group(ups, groups)
    return {n: (v + agg[n] if n in agg else v) for n, v in model_params.items()}


class KeepPrivate(FedAvg, abc.ABC):
    """Base of methods that keep some parameters on the client (FedPer, FedRep, FedBN).

    The private parameters are never uploaded; each client keeps its own copy in its algorithm slot (``personal``)
    and starts from it (the first time, from the global initial values).
    """


    @abc.abstractmethod
    def private(self, model: MultiTaskModel, name: str) -> bool:
        """Whether parameter ``name`` stays on the client."""

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]:
        return [n for n in super().uploaded_names(model, client) if not self.private(model, n)]

    def keep(self, model: MultiTaskModel, result: LocalResult) -> LocalResult:
        personal = {n: v for n, v in result.params.items() if self.private(model, n)}
        return LocalResult(result.params, result.metrics, result.state.with_algorithm({**result.state.algorithm, "personal": personal}), result.outbox)

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        res = trainer.train(start_from(start, state), client, state.training(), generator)
        return self.keep(trainer.model, res)


def start_from(start: Mapping[str, Tensor], state: ClientState) -> dict[str, Tensor]:
    """Where a client's local training begins: the broadcast model with its own ``personal`` copies over it."""
    return {**start, **state.algorithm.get("personal", {})}


def is_local(model: MultiTaskModel, name: str) -> bool:
    return model.group_of(name) == LOCAL
