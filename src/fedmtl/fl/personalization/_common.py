"""Helpers shared by the personalisation methods: forked randomness, functional losses, cluster averaging."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from fedmtl.data.dataset import ClientData, Split
from fedmtl.fl.aggregation import aggregate_by_group
from fedmtl.fl.algorithm import FedAvg, without_server
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL, MultiTaskModel
from fedmtl.tree import TensorTree


def fork(generator: torch.Generator) -> torch.Generator:
    """A new generator seeded by one draw from ``generator`` (a second, independent stream)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed)


def drop(state: TensorTree, *keys: str) -> TensorTree:
    """``state`` without the server broadcast and without ``keys``."""
    return {k: v for k, v in without_server(state).items() if k not in keys}


def client_loss(model: MultiTaskModel, params: Mapping[str, Tensor], split: Split, tasks: Sequence[str], idx: Tensor | None = None, per_sample: bool = False) -> Tensor:
    """Sum over ``tasks`` of the task losses of ``params`` (a functional call, the model is not touched).

    Equal task weights: the methods with their own training loop (APFL, pFedMe, FedEM, IFCA's choice)
    do not apply the ``mtl`` balancer.
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

    The private parameters are never uploaded; each client keeps its own copy in ``state["personal"]``
    and starts from it (the first time, from the global initial values).
    """

    vectorizable = False

    @abc.abstractmethod
    def private(self, model: MultiTaskModel, name: str) -> bool:
        """Whether parameter ``name`` stays on the client."""

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]:
        return [n for n in super().uploaded_names(model, client) if not self.private(model, n)]

    def start_from(self, start: Mapping[str, Tensor], state: TensorTree) -> dict[str, Tensor]:
        return {**start, **state.get("personal", {})}  # type: ignore[dict-item]

    def keep(self, model: MultiTaskModel, result: LocalResult) -> LocalResult:
        personal = {n: v for n, v in result.params.items() if self.private(model, n)}
        return LocalResult(result.params, result.metrics, {**result.state, "personal": personal})

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: TensorTree, generator: torch.Generator
    ) -> LocalResult:
        res = trainer.train(self.start_from(start, state), client, drop(state, "personal"), generator)
        return self.keep(trainer.model, res)

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: TensorTree
    ) -> dict[str, Tensor]:
        return {**super().personal_params(model, global_params, client, state), **state.get("personal", {})}  # type: ignore[dict-item]


def is_local(model: MultiTaskModel, name: str) -> bool:
    return model.group_of(name) == LOCAL
