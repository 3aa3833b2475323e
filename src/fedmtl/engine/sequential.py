"""The sequential engine: one client after another; the reference every other engine matches."""

from __future__ import annotations

from collections.abc import Sequence

from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.cohort import CohortJob


class SequentialEngine:
    """Each client's step in turn, through the algorithm's own ``local_train``."""

    name = "sequential"

    def __init__(self) -> None:
        #: client trainings of the last cohort, by engine (what metrics.jsonl reports per round)
        self.last_run: dict[str, int] = {}

    def supports(self, algorithm: Algorithm, trainer: LocalTrainer, sample: CohortJob | None = None) -> str | None:
        """The reference runs everything."""
        return None

    def run_cohort(
        self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]
    ) -> list[LocalResult]:
        self.last_run = {"sequential": len(jobs)}
        return [algorithm.local_train(trainer, j.start, j.client, j.state, j.generator) for j in jobs]
