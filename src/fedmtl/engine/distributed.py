"""torch.distributed: ``torchrun`` ranks each simulate a slice of the cohort.

Two ways to use it, both launched the way torchrun launches anything (one node or many)::

    torchrun --nproc_per_node=2 -m fedmtl.engine.distributed --config exp.yaml --rounds 5
    torchrun --nnodes=4 --node_rank=$R --master_addr=$HEAD --nproc_per_node=8 -m fedmtl.engine.distributed ...

* a :class:`~fedmtl.fl.federation.Federation` whose transport is :class:`fedmtl.engine.reducing.Streamed` with
  ``distributed=True`` (what :mod:`fedmtl.runloop.torchrun` uses): each rank trains its slice, reduces its
  clients' weighted updates locally, and one ``all_reduce`` adds the sums of all ranks (weighted-mean
  aggregators). Other rounds all-gather the trained results and every rank runs the plain round on the
  whole cohort (the transport :func:`gathered`).
* :class:`DistributedEngine` alone, under the plain :class:`~fedmtl.fl.federation.Federation`: each
  rank trains its slice and the results are all-gathered, so the unchanged round loop works.

Every rank builds the same data and model from the same config and seed, samples the same cohort and
ends each round with the same global model. Collectives use gloo on CPU and NCCL with CUDA.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.cohort import CohortJob, Engine
from fedmtl.fl.federation import Federation
from fedmtl.fl.transport import InProcess

log = logging.getLogger("fedmtl")


def rank_slice(items: Sequence[int], rank: int, world: int) -> list[int]:
    """A contiguous, near-equal share of ``items`` for ``rank`` (the first ranks take one more)."""
    q, r = divmod(len(items), world)
    lo = rank * q + min(rank, r)
    return list(items[lo : lo + q + (1 if rank < r else 0)])


def init_distributed(backend: str = "auto", timeout_s: float = 300.0) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; ``(rank, world_size)``.

    Without torchrun's variables (a plain ``python`` run) nothing is initialised and this is rank 0 of 1.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


class DistributedEngine:
    """Runs this rank's slice of the cohort on ``local`` and all-gathers every rank's results."""

    name = "distributed"

    def __init__(self, local: Engine, backend: str = "auto"):
        self.local = local
        self.backend = backend

    def supports(self, algorithm: Algorithm, trainer: LocalTrainer, sample: CohortJob | None = None) -> str | None:
        """What the local engine supports: each rank runs its slice there."""
        return self.local.supports(algorithm, trainer, sample)

    def run_cohort(
        self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]
    ) -> list[LocalResult]:
        rank, world = init_distributed(self.backend)
        if world == 1:
            return self.local.run_cohort(algorithm, trainer, jobs)
        mine = rank_slice(range(len(jobs)), rank, world)
        results = self.local.run_cohort(algorithm, trainer, [jobs[i] for i in mine])
        gathered: list[list[LocalResult]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, results)
        return [r for part in gathered for r in part]  # rank slices are contiguous, in order


def gathered(fed: Federation) -> InProcess:
    """The plain round's transport with training spread over the ranks and the results all-gathered (any
    aggregator): the in-process transport over a :class:`DistributedEngine` around the federation's engine."""
    if fed.engine is None:
        raise RuntimeError("this round has no engine; pass one to simulate rounds")
    return InProcess(fed, DistributedEngine(fed.engine))


if __name__ == "__main__":  # torchrun ... -m fedmtl.engine.distributed: the entry point lives above this module
    import runpy

    runpy.run_module("fedmtl.runloop.torchrun", run_name="__main__")
