"""Containers for federated multi-task data: a split, a client's data, the whole federation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fedmtl.data.cleaning import CleaningReport
from fedmtl.tasks import Task


@dataclass(frozen=True)
class Split:
    """Rows of features and, per task, their targets (only the tasks this split is labelled with)."""

    x: Tensor
    y: dict[str, Tensor]

    def __post_init__(self) -> None:
        for name, t in self.y.items():
            if t.shape[0] != self.x.shape[0]:
                raise ValueError(f"target {name!r} has {t.shape[0]} rows but x has {self.x.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Tensor | np.ndarray | Sequence[int]) -> Split:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return Split(self.x[idx], {k: v[idx] for k, v in self.y.items()})

    def only(self, tasks: Sequence[str]) -> Split:
        return Split(self.x, {t: self.y[t] for t in tasks})


@dataclass(frozen=True)
class ClientData:
    """One client's private data: a local train split, a local test split, the tasks it holds."""

    client_id: int
    tasks: tuple[str, ...]
    train: Split
    test: Split
    cleaning: Mapping[str, int] = field(default_factory=dict)
    """this client's :class:`~fedmtl.data.cleaning.CleaningCounts` as a dict (rows, dropped per reason, imputed)"""

    @property
    def num_train(self) -> int:
        return len(self.train)


@dataclass(frozen=True)
class FederatedData:
    """The federation: tasks, every client's data, and the server's held-out test split."""

    tasks: tuple[Task, ...]
    input_shape: tuple[int, ...]
    clients: tuple[ClientData, ...]
    holdout: Split
    description: str = ""
    cleaning: CleaningReport | None = None
    """what cleaning and the minimum client size did (None for data built outside :func:`build_federated_data`)"""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task {name!r}; tasks are {self.task_names}")

    def summary(self) -> dict[str, object]:
        sizes = np.array([c.num_train for c in self.clients])
        return {
            "clients": self.num_clients,
            "tasks": {t.name: t.kind for t in self.tasks},
            "train_rows": int(sizes.sum()),
            "client_train_rows": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
            "holdout_rows": len(self.holdout),
            "input_shape": list(self.input_shape),
        }
