"""What the round loop asks of an engine: run a cohort's local training, return results in order.

Defined here, in `fl`, so the loop depends on the protocol only; `fedmtl.engine` implements it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class CohortJob:
    """One client's share of a round: where it starts, its data, its state, its randomness."""

    start: Mapping[str, Tensor]
    client: ClientData
    state: TensorTree
    generator: torch.Generator


class Engine(Protocol):
    """Runs local training for every job of a cohort and returns results in the jobs' order."""

    name: str

    def run_cohort(self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]) -> list[LocalResult]: ...
