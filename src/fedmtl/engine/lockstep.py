"""Runs a cohort's client steps in lock-step so that their training calls can be batched.

An algorithm's client step (:meth:`fedmtl.fl.algorithm.Algorithm.local_train`) is ordinary code that asks
its trainer for work: ``trainer.train(...)`` (FedAvg, FedProx, SCAFFOLD, FedPer, FedRep's two phases,
Ditto's two models, IFCA, MOCHA, local) or one minibatch's ``trainer.grads(...)`` (APFL, pFedMe, FedEM,
which step several parameter sets themselves). Here each client's step runs as a coroutine (a greenlet):
its trainer hands every request back to this driver and waits; once every client of the cohort is waiting
or done, the driver answers all requests of one kind at once (one batched computation per chunk) and
resumes each client with its answer. Each client's code runs in its own order with its own generator, so
it draws exactly what it draws when run alone: the sequential engine's results, computed together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from greenlet import greenlet
from torch import Tensor

from fedmtl.engine.stacked import GradRequest, TrainRequest
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.cohort import CohortJob

Request = TrainRequest | GradRequest


class BatchingTrainer:
    """The trainer a client's step sees under the driver: requests go to the driver, answers come back.

    Every other attribute (model, configs) is the real trainer's.
    """

    def __init__(self, trainer: LocalTrainer):
        self._trainer = trainer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def train(self, start, client, state, generator, *, prox=None, grad_offset=None, trainable=None, epochs=None) -> LocalResult:  # type: ignore[no-untyped-def]
        result: LocalResult = _ask(TrainRequest(start, client, state, generator, prox, grad_offset, trainable, epochs))
        return result

    def grads(self, params, client, idx, objective, ostate, generator, epoch=0, weights=None):  # type: ignore[no-untyped-def]
        return _ask(GradRequest(params, client, idx, objective, ostate, generator, epoch, weights))


class _Ask:
    __slots__ = ("request",)

    def __init__(self, request: Request):
        self.request = request


def _ask(request: Request) -> Any:
    parent = greenlet.getcurrent().parent
    if parent is None:
        raise RuntimeError("a BatchingTrainer is only usable inside run_lockstep")
    return parent.switch(_Ask(request))


def run_lockstep(
    algorithm: Algorithm,
    trainer: LocalTrainer,
    jobs: Sequence[CohortJob],
    train_many: Callable[[list[TrainRequest]], list[LocalResult]],
    grads_many: Callable[[list[GradRequest]], list[tuple[dict[str, Tensor], Tensor, Any]]],
) -> list[LocalResult]:
    """Every job's ``algorithm.local_train`` with its training requests answered in batches.

    Args:
        train_many: answers a list of train requests (in order).
        grads_many: answers a list of gradient requests (in order).
    """
    proxy = BatchingTrainer(trainer)
    lets = [
        greenlet(lambda j=j: algorithm.local_train(proxy, j.start, j.client, j.state, j.generator))  # type: ignore[arg-type]
        for j in jobs
    ]
    results: list[LocalResult | None] = [None] * len(jobs)
    waiting: dict[int, Request] = {}

    def resume(i: int, value: object) -> None:
        out = lets[i].switch(value) if value is not None else lets[i].switch()
        if isinstance(out, _Ask):
            waiting[i] = out.request
        else:
            results[i] = out

    grad_mode = torch.is_grad_enabled()
    for i in range(len(jobs)):
        resume(i, None)
    while waiting:
        trains = sorted(i for i, r in waiting.items() if isinstance(r, TrainRequest))
        grads = sorted(i for i, r in waiting.items() if isinstance(r, GradRequest))
        batch = waiting
        waiting = {}
        torch.set_grad_enabled(grad_mode)
        if trains:
            for i, ans in zip(trains, train_many([batch[i] for i in trains])):  # type: ignore[misc]
                resume(i, ans)
        if grads:
            for i, answer in zip(grads, grads_many([batch[i] for i in grads])):  # type: ignore[misc]
                resume(i, answer)
    return results  # type: ignore[return-value]
