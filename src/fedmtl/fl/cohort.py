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
from fedmtl.fl.client_state import ClientState


@dataclass(frozen=True)
class CohortJob:
    """One client's share of a round: where it starts, its data, its state, its randomness."""

    start: Mapping[str, Tensor]
    client: ClientData
    state: ClientState
    generator: torch.Generator


class Engine(Protocol):
    """Runs local training for every job of a cohort and returns results in the jobs' order.

    An engine declares what it can run itself: :meth:`supports` says why not (for the user), or None. The
    round never asks which engine it has; an engine that cannot run a cohort itself hands it to its
    fallback inside :meth:`run_cohort` (the vectorised engine to the sequential one).
    """

    name: str

    def supports(self, algorithm: Algorithm, trainer: LocalTrainer, sample: CohortJob | None = None) -> str | None:
        """Why this engine cannot run such a cohort itself (``sample``: one of its jobs), or None when it can."""
        ...

    def run_cohort(self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]) -> list[LocalResult]: ...
