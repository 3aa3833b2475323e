"""Runs a cohort's client steps in lock-step so that their training calls can be batched.

An algorithm's client step (:meth:`fedmtl.fl.algorithm.Algorithm.local_train`) is ordinary code that asks
its trainer for work: ``trainer.train(...)`` (FedAvg, FedProx, SCAFFOLD, FedPer, FedRep's two phases,
IFCA, MOCHA, local), several independent trainings at once with ``trainer.train_each([...])`` (Ditto's two
models), or one minibatch's ``trainer.grads(...)`` (APFL, pFedMe, FedEM, which step several parameter sets
themselves). Here each client's step runs as a coroutine (a greenlet):
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

from fedmtl.engine.stacked import GradRequest
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import LocalResult, LocalTrainer, TrainRequest
from fedmtl.fl.cohort import CohortJob

Request = TrainRequest | GradRequest
#: what a waiting client asked for: one request, or several independent trainings (``train_each``)
Ask = Request | list[TrainRequest]


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

    def train_each(self, requests: Sequence[TrainRequest]) -> list[LocalResult]:
        if not requests:
            return []
        results: list[LocalResult] = _ask(list(requests))
        return results

    def grads(self, params, client, idx, objective, ostate, generator, epoch=0, weights=None):  # type: ignore[no-untyped-def]
        return _ask(GradRequest(params, client, idx, objective, ostate, generator, epoch, weights))


class _Ask:
    __slots__ = ("request",)

    def __init__(self, request: Ask):
        self.request = request


def _ask(request: Ask) -> Any:
    parent = greenlet.getcurrent().parent
    if parent is None:
        raise RuntimeError("a BatchingTrainer is only usable inside run_lockstep")
    return parent.switch(_Ask(request))


def _trainings(ask: Ask) -> list[TrainRequest]:
    """The training requests of one client's ask (one, or the list it asked for together)."""
    if isinstance(ask, list):
        return ask
    assert isinstance(ask, TrainRequest)
    return [ask]


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
    waiting: dict[int, Ask] = {}

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
        trains = sorted(i for i, r in waiting.items() if not isinstance(r, GradRequest))
        grads = sorted(i for i, r in waiting.items() if isinstance(r, GradRequest))
        batch = waiting
        waiting = {}
        torch.set_grad_enabled(grad_mode)
        if trains:  # every waiting client's trainings in one list, the answers handed back per client
            asked = [_trainings(batch[i]) for i in trains]
            answers = iter(train_many([r for rs in asked for r in rs]))
            for i, rs in zip(trains, asked):
                got = [next(answers) for _ in rs]
                resume(i, got if isinstance(batch[i], list) else got[0])
        if grads:
            for i, answer in zip(grads, grads_many([batch[i] for i in grads])):  # type: ignore[misc]
                resume(i, answer)
    return results  # type: ignore[return-value]
