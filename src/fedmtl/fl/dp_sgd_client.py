"""Local training under sample-level DP-SGD (Abadi et al., 2016), with per-example gradients from ``torch.func``.

Every example's gradient is ``torch.func.grad`` of its own weighted task losses, vectorised over the batch
with ``vmap`` (the transform Opacus' ``GradSampleModule`` replaces with hooks per layer type; here any model
of vmappable operations works). Clipping, noise and accounting are :mod:`fedmtl.privacy.dp.dpsgd`'s. The
vectorised engine runs the same :func:`example_gradients` once more under ``vmap`` over clients, so the two
engines agree exactly, draws included.

Each client's accounting history is kept in its state, so its epsilon composes over every round it takes
part in. A model-wide penalty (soft sharing, MTRL) does not read any example: its gradient is added after
clipping and noise, unclipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from fedmtl.config.privacy import DPSGDConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.client_state import DP_SGD_HISTORY, ClientState
from fedmtl.fl.functional_optimizer import FunctionalOptimizer
from fedmtl.fl.local_parts import (
    LocalResult,
    finish_local,
    held_parameter_names,
    load_parameters,
    norm_buffer_names,
)
from fedmtl.mtl import MultiTaskModel
from fedmtl.privacy.dp.accountant import PrivacyAccountant
from fedmtl.privacy.dp.dpsgd import DPSGDSchedule, clip_and_noise, dp_batches
from fedmtl.tasks import Task

if TYPE_CHECKING:
    from fedmtl.fl.client import LocalTrainer, Prox

#: the key of a client's accounting history (a ``[k, 3]`` tensor of ``(sigma, q, steps)``) in its privacy slot
HISTORY_KEY = DP_SGD_HISTORY


def example_gradients(
    model: MultiTaskModel,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    ys: Mapping[str, Tensor],
    tasks: Sequence[Task],
    weights: Tensor,
) -> dict[str, Tensor]:
    """Each row's gradient ``[B, ...]`` of its weighted task losses ``sum_t w_t loss_t(row)`` at ``params``.

    A row without a label for a task (partial labels) adds nothing for that task; ``weights[t] = 0`` leaves
    a task out (a task the client does not hold, in a batched chunk).
    """
    names = [t.name for t in tasks]

    def row_loss(p: dict[str, Tensor], xr: Tensor, yr: dict[str, Tensor]) -> Tensor:
        preds = functional_call(model, (p, dict(buffers)), (xr.unsqueeze(0), names))
        total = xr.new_zeros((), dtype=torch.float32)
        for i, task in enumerate(tasks):
            total = total + weights[i] * task.loss(preds[task.name], yr[task.name].unsqueeze(0), reduction="sum")
        return total

    return vmap(grad(row_loss), in_dims=(None, 0, 0), randomness="different")(dict(params), x, dict(ys))  # type: ignore[no-any-return]


def refuse_changed_steps(prox: Prox | None, grad_offset: object, trainable: object, epochs: object) -> None:
    """DP-SGD privatises plain steps: an algorithm that changes them is refused (the config refuses it earlier)."""
    if prox is not None or grad_offset is not None or trainable is not None or epochs is not None:
        raise ValueError(
            "privacy.dp_sgd runs plain local SGD steps; it cannot be combined with an algorithm that "
            "adds a proximal term, control variates or training phases (use fedavg, fedper or local)"
        )


def refuse_unprivatisable(model: MultiTaskModel, balancer_requires: str, balancer_name: str) -> None:
    """BatchNorm mixes examples (no per-example gradient exists); a gradient balancer needs per-task gradients."""
    if norm_buffer_names(model):
        raise ValueError(f"privacy.dp_sgd needs per-example gradients; model {type(model).__name__} normalises with batch statistics (BatchNorm), which mixes the examples of a batch: use LayerNorm or GroupNorm")
    if balancer_requires != "losses":
        raise ValueError(
            f"privacy.dp_sgd needs a balancer that only weights losses; mtl.balancer {balancer_name!r} "
            "needs per-task gradients, which per-sample clipping does not provide"
        )


def prior_accountant(state: ClientState, cfg: DPSGDConfig) -> PrivacyAccountant:
    """The client's accounting so far (empty on its first round)."""
    tree = state.privacy.get(HISTORY_KEY)
    if not isinstance(tree, Tensor) or tree.numel() == 0:
        return PrivacyAccountant(cfg.accountant)
    return PrivacyAccountant.from_history_tensor(cfg.accountant, tree)


def train_with_dp_sgd(
    trainer: LocalTrainer,
    start: Mapping[str, Tensor],
    client: ClientData,
    state: ClientState,
    generator: torch.Generator,
    cfg: DPSGDConfig,
) -> LocalResult:
    """DP-SGD local training of one client; same inputs and outputs as :meth:`LocalTrainer.train`."""
    from fedmtl.mtl import build_objective

    model = trainer.model
    tasks = list(client.tasks)
    objective = build_objective(trainer.mtl_cfg, tasks)
    refuse_unprivatisable(model, objective.balancer.requires, trainer.mtl_cfg.balancer.name)
    names = held_parameter_names(model, tasks)
    known = dict(model.named_parameters())
    load_parameters(model, {n: v for n, v in start.items() if n in known})
    if state.local:
        load_parameters(model, state.local)
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    opt = FunctionalOptimizer(trainer.cfg.optimizer)
    schedule = DPSGDSchedule.of(cfg, len(client.train), trainer.cfg.batch_size, trainer.cfg.epochs)
    plan = dp_batches(len(client.train), trainer.cfg.batch_size, schedule, cfg.poisson_sampling, generator)
    task_objs = [model.tasks[t] for t in tasks]
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    ostate = state.objective or objective.init()
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64)
    batches_with_rows = 0
    sigma, expected = torch.tensor([schedule.noise_multiplier]), torch.tensor([schedule.expected_batch_size])
    model.train()
    for epoch, idx in plan:
        x, ys = client.train.x[idx], {t: client.train.y[t][idx] for t in tasks}
        if len(idx):
            with torch.no_grad():
                preds = model(x, tasks)
                losses = torch.stack([task.loss(preds[task.name], ys[task.name]) for task in task_objs])
            w, ostate = objective.plan(losses, ostate, generator, epoch)
            assert w is not None  # a loss-weighting balancer (refused otherwise)
            loss_sums += losses.double()
            batches_with_rows += 1
            values = {n: named[n].detach() for n in names}
            per_row = {n: g.unsqueeze(0) for n, g in example_gradients(model, values, buffers, x, ys, task_objs, w).items()}
            drawn = torch.ones(1, len(idx))
        else:  # an empty Poisson batch: the step is noise alone
            per_row = {n: torch.zeros((1, 1, *named[n].shape)) for n in names}
            drawn = torch.zeros(1, 1)
        private = clip_and_noise(per_row, drawn, {n: torch.ones(1) for n in names}, cfg.max_grad_norm, sigma, expected, [generator])
        penalty = model.penalty()
        pulls = torch.autograd.grad(penalty, params, allow_unused=True) if penalty is not None else (None,) * len(params)
        opt.step(named, {n: private[n][0] if pull is None else private[n][0] + pull for n, pull in zip(names, pulls)})
    history = schedule.account(prior_accountant(state, cfg))
    sums = {t: float(loss_sums[i]) for i, t in enumerate(tasks)}  # mean losses over the steps that drew rows
    result = finish_local(model, names, sums, batches_with_rows, ClientState(objective=ostate, privacy={HISTORY_KEY: history.history_tensor()}))
    result.metrics["steps"] = float(len(plan))
    result.metrics["dp_sgd_epsilon"] = history.epsilon(cfg.delta)
    return result


__all__ = ["HISTORY_KEY", "example_gradients", "prior_accountant", "refuse_changed_steps", "refuse_unprivatisable", "train_with_dp_sgd"]
