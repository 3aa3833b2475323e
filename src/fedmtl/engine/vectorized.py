"""The vectorised engine: a cohort's local training as batched computations, for any model and method.

Each client's step runs in lock-step with the others (:mod:`fedmtl.engine.lockstep`); their training
requests are answered a chunk of clients at a time by :class:`~fedmtl.engine.stacked.StackedTraining`
(``torch.func.functional_call`` + ``vmap`` over stacked parameters, ordinary autograd, ``torch.optim``).
The maths is :meth:`fedmtl.fl.client.LocalTrainer.train`'s, so results match the sequential engine.

What it cannot batch runs on the sequential engine, with the reason logged once and counted in
``engine_clients``: balancing on the shared *representation*
(the model hands its representation out of the forward pass), and a model whose operations have no
``vmap`` rule (found by a probe the first time the engine sees the model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.engine.lockstep import run_lockstep
from fedmtl.engine.one_step import OneStepResult, one_step_applies, train_one_step
from fedmtl.engine.stacked import (
    GradRequest,
    StackedResult,
    StackedTraining,
    TrainRequest,
    batch_key,
    draw_plan,
    has_norm_statistics,
)
from fedmtl.fl.algorithm import Algorithm, FedAvg, without_server
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.cohort import CohortJob
from fedmtl.mtl import MultiTaskModel, build_objective

log = logging.getLogger("fedmtl")


class VectorizedEngine:
    """Trains a cohort in chunks of clients, each chunk as one batched computation.

    Args:
        chunk_clients: clients per batched computation; ``None`` picks it from ``memory_budget_mb``.
        memory_budget_mb: working memory a chunk may use (parameters, gradients, optimiser state, activations).
        fallback: the engine for cohorts this one cannot batch (default: sequential).
        device: where the batched computations run (``runtime.device``).
        one_step: reduce chunks whose clients all take one SGD step from one shared reverse pass
            (:mod:`fedmtl.engine.one_step`; exact, so on by default; off measures the general path alone).
    """

    name = "vectorized"

    def __init__(
        self,
        chunk_clients: int | None = None,
        memory_budget_mb: int = 512,
        fallback: object | None = None,
        device: torch.device | str = "cpu",
        one_step: bool = True,
    ):
        from fedmtl.engine.sequential import SequentialEngine

        #: where the batched computations run (the server's state, codecs and fallback stay on the CPU)
        self.device = torch.device(device)
        self.chunk_clients = chunk_clients
        self.one_step = one_step
        self.memory_budget_mb = memory_budget_mb
        self.fallback = fallback if fallback is not None else SequentialEngine()
        self._warned: set[str] = set()
        self._announced = False
        self._probed: dict[int, str | None] = {}
        self._activations: dict[int, int] = {}
        self._training: tuple[LocalTrainer, StackedTraining] | None = None
        self.last_run: dict[str, int] = {}

    # -- support -------------------------------------------------------------------------------
    def supports(self, algorithm: Algorithm, trainer: LocalTrainer, sample: CohortJob | None = None) -> str | None:
        """Why this cohort cannot be batched (named for the user), or ``None`` when it can."""
        if sample is None:
            return None
        objective = build_objective(trainer.mtl_cfg, sample.client.tasks)
        if objective.grad_source == "representation" and objective.balancer.requires != "losses":
            return "per-task gradients of the shared representation (mtl.gradients.source 'representation' or mgda_ub): the model hands it out of the forward pass"
        return self._probe(trainer.model, sample)

    def _probe(self, model: MultiTaskModel, job: CohortJob) -> str | None:
        """Run the model once under ``vmap`` on two clients' copies of two rows; the failure, if any, is the reason."""
        key = id(model)
        if key not in self._probed:
            try:
                params = {n: p.detach().unsqueeze(0).expand(2, *p.shape) for n, p in model.named_parameters()}
                buffers = {n: b.detach().unsqueeze(0).expand(2, *b.shape).clone() for n, b in model.named_buffers()}
                x = job.client.train.x[:2].unsqueeze(0).expand(2, *job.client.train.x[:2].shape)
                sizes: list[int] = []
                hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(_numel(o))) for m in model.modules() if not list(m.children())]
                try:
                    with torch.no_grad():
                        torch.func.vmap(lambda p, b, xc: torch.func.functional_call(model, (p, b), (xc, list(job.client.tasks))), randomness="different")(params, buffers, x)
                finally:
                    for h in hooks:
                        h.remove()
                # inside vmap a hook sees one client's outputs: per row, divide by that client's rows
                self._activations[key] = max(1, sum(sizes) // max(1, int(x.shape[1])))
                self._probed[key] = None
            except Exception as exc:  # noqa: BLE001 - any failure means: not batchable, say why
                self._probed[key] = f"model {type(model).__name__} under torch.func.vmap ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        return self._probed[key]

    @property
    def fallback_reasons(self) -> list[str]:
        """Why cohorts ran on the sequential engine so far (each reason once)."""
        return sorted(self._warned)

    def _warn(self, feature: str) -> None:
        if feature not in self._warned:
            self._warned.add(feature)
            log.warning("vectorized engine: %s cannot be batched; those clients run on the sequential engine", feature)

    # -- the protocol --------------------------------------------------------------------------
    def run_cohort(self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]) -> list[LocalResult]:
        reason = self.supports(algorithm, trainer, jobs[0] if jobs else None)
        if reason is not None:
            self._warn(reason)
            self.last_run = {"vectorized": 0, "sequential": len(jobs)}
            return self.fallback.run_cohort(algorithm, trainer, jobs)  # type: ignore[attr-defined, no-any-return]
        training = self._stacked(trainer)
        chunk = self.chunk_size(trainer)

        def train_many(requests: list[TrainRequest]) -> list[LocalResult]:
            out: list[LocalResult] = []
            for lo in range(0, len(requests), chunk):
                out += training.train_results(requests[lo : lo + chunk])
            return out

        def grads_many(requests: list[GradRequest]) -> list[tuple[dict[str, Tensor], Tensor, object]]:
            out: list[tuple[dict[str, Tensor], Tensor, object]] = []
            for lo in range(0, len(requests), chunk):
                out += training.grads(requests[lo : lo + chunk])
            return out

        results = run_lockstep(algorithm, trainer, jobs, train_many, grads_many)
        self.last_run = {"vectorized": len(jobs), "sequential": 0}
        self._announce(len(jobs), chunk)
        return results

    def run_stacked(self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]) -> StackedResult | OneStepResult | None:
        """Train ``jobs`` as one chunk and return the stacked result; ``None`` where the result is not simply
        the trained model (any algorithm but FedAvg's client step) or cannot be batched.

        For rounds that reduce updates without unstacking them (:class:`fedmtl.engine.reducing.Streamed`):
        where every client takes one SGD step from the same start, the reduced sums come from one shared
        reverse pass (:mod:`fedmtl.engine.one_step`) unless ``one_step`` is off.
        """
        if type(algorithm).local_train is not FedAvg.local_train or not jobs or trainer.dp_sgd is not None:
            return None  # DP-SGD's results carry each client's accounting: they are unstacked
        if self.supports(algorithm, trainer, jobs[0]) is not None or len({batch_key(trainer.model, tasks, []) for tasks in {j.client.tasks for j in jobs}}) > 1 or has_norm_statistics(trainer.model):
            return None  # BatchNorm or a forward-reading penalty: clients are grouped, so the result is not one stack
        self.last_run = {"vectorized": len(jobs), "sequential": 0}
        self._announce(len(jobs), len(jobs))
        requests = [TrainRequest(j.start, j.client, without_server(j.state), j.generator) for j in jobs]
        training = self._stacked(trainer)
        plans = [draw_plan(r, trainer.cfg.batch_size, trainer.cfg.epochs, False) for r in requests]
        objectives = [training.objective(tuple(r.client.tasks)) for r in requests]
        if self.one_step and one_step_applies(trainer.model, trainer.cfg, requests, plans, objectives):
            return train_one_step(training, requests, plans)
        return training.train(requests, plans)

    def _stacked(self, trainer: LocalTrainer) -> StackedTraining:
        if self._training is None or self._training[0] is not trainer:
            self._training = (trainer, StackedTraining(trainer.model, trainer.cfg, trainer.mtl_cfg, self.device, trainer.dp_sgd))
        return self._training[1]

    def _announce(self, clients: int, chunk: int) -> None:
        if not self._announced:
            self._announced = True
            log.info("engine: vectorized (%d clients batched in chunks of %d)", clients, chunk)

    def chunk_size(self, trainer: LocalTrainer) -> int:
        return self.chunk_clients or self._auto_chunk(trainer)

    def _auto_chunk(self, trainer: LocalTrainer) -> int:
        """Clients per chunk so that parameters, gradients, optimiser state and activations fit the budget."""
        model, cfg = trainer.model, trainer.cfg
        n_params = sum(p.numel() for p in model.parameters())
        opt = cfg.optimizer
        copies = 4 + (2 if opt.name == "adam" else 1 if getattr(opt, "momentum", 0) > 0 else 0)
        if getattr(getattr(trainer.mtl_cfg, "balancer", None), "name", "equal") not in ("equal", "static"):
            copies += len(model.tasks)  # per-task gradient rows
        per_row = self._activations.get(id(model)) or sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        per_client = 4 * (copies * n_params + 3 * cfg.batch_size * per_row)
        return max(1, min(4096, (self.memory_budget_mb << 20) // max(per_client, 1)))


def _numel(out: object) -> int:
    if isinstance(out, Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return sum(_numel(o) for o in out)
    if isinstance(out, dict):
        return sum(_numel(o) for o in out.values())
    return 0
