"""An algorithm's client side: how a client trains, what it uploads, which model it keeps for itself.

FedAvg trains the global model on the client's tasks, uploads every held parameter's delta and
uses the global model (with any ``local`` parameters it keeps) as its personalised model.
Personalisation methods change exactly these three answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from fedmtl.data.dataset import ClientData
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.mtl import LOCAL, MultiTaskModel
from fedmtl.tree import TensorTree


class Algorithm(Protocol):
    """Client-side behaviour of a federated algorithm."""

    name: str
    #: whether the vectorised engine may batch this algorithm's local training
    vectorizable: bool

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: TensorTree, generator: torch.Generator
    ) -> LocalResult: ...

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]: ...

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: TensorTree
    ) -> dict[str, Tensor]: ...


class FedAvg:
    """McMahan et al. (2017): local SGD from the global model, every held parameter uploaded."""

    name = "fedavg"
    vectorizable = True

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: TensorTree, generator: torch.Generator
    ) -> LocalResult:
        return trainer.train(start, client, state, generator)

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]:
        return [n for n in held_parameter_names(model, client.tasks) if model.group_of(n) != LOCAL]

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: TensorTree
    ) -> dict[str, Tensor]:
        out = dict(global_params)
        out.update(state.get("local", {}))  # type: ignore[arg-type]
        return out


def build_algorithm(cfg: object) -> Algorithm:
    """The algorithm an ``algorithm`` config describes."""
    from fedmtl.config import algorithm as acfg

    if isinstance(cfg, acfg.FedAvgAlgorithm):
        return FedAvg()
    raise TypeError(f"unknown algorithm config {cfg!r}")  # pragma: no cover
