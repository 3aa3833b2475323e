"""Local training under sample-level DP-SGD (Abadi et al., 2016) through Opacus.

Each step clips every example's gradient and adds Gaussian noise; the client's own accountant history
is kept in its state, so its epsilon composes over every round it takes part in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from fedmtl.config.privacy import DPSGDConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.local_parts import (
    LocalResult,
    finish_local,
    held_parameter_names,
    load_parameters,
    make_optimizer,
)
from fedmtl.privacy.dp.accountant import PrivacyAccountant
from fedmtl.privacy.dp.dpsgd import make_private_client
from fedmtl.tree import TensorTree

if TYPE_CHECKING:
    from fedmtl.fl.client import LocalTrainer


def _history(tree: object, mechanism: str) -> PrivacyAccountant | None:
    if not isinstance(tree, Tensor) or tree.numel() == 0:
        return None
    return PrivacyAccountant.from_history_tensor(mechanism, tree)  # type: ignore[arg-type]


def train_with_dp_sgd(
    trainer: LocalTrainer,
    start: Mapping[str, Tensor],
    client: ClientData,
    state: TensorTree,
    generator: torch.Generator,
    cfg: DPSGDConfig,
) -> LocalResult:
    """DP-SGD local training; same inputs and outputs as :meth:`LocalTrainer.train`."""
    from fedmtl.mtl import build_objective

    model = trainer.model
    tasks = list(client.tasks)
    objective = build_objective(trainer.mtl_cfg, tasks)
    if objective.balancer.requires != "losses":
        raise ValueError(
            f"privacy.dp_sgd needs a balancer that only weights losses; mtl.balancer "
            f"{trainer.mtl_cfg.balancer.name!r} needs per-task gradients, which per-sample clipping does not provide"
        )
    names = held_parameter_names(model, tasks)
    load_parameters(model, {n: start[n] for n in names if n in start})
    named = dict(model.named_parameters())
    trainable = set(names)
    for n, p in named.items():  # Opacus clips the gradients of every parameter that requires one
        p.requires_grad_(n in trainable)
    try:
        params = [named[n] for n in names]
        dataset = TensorDataset(client.train.x, *(client.train.y[t] for t in tasks))
        loader = DataLoader(dataset, batch_size=trainer.cfg.batch_size, shuffle=True, generator=generator)
        prior = _history(state.get("dp_sgd_history"), cfg.accountant)
        model.train()
        session = make_private_client(
            model, make_optimizer(trainer.cfg.optimizer, params), loader, cfg, epochs=trainer.cfg.epochs, generator=generator, prior=prior
        )
        ostate = state.get("objective") or objective.init()
        loss_sums = dict.fromkeys(tasks, 0.0)
        steps = 0
        session.module.train()
        for epoch in range(trainer.cfg.epochs):
            for batch in session.data_loader:
                x, ys = batch[0], batch[1:]
                if x.shape[0] == 0:  # Poisson sampling can draw an empty batch
                    continue
                preds = session.module(x, tasks)
                losses = {t: model.tasks[t].loss(preds[t], y) for t, y in zip(tasks, ys)}
                session.optimizer.zero_grad(set_to_none=True)
                ostate, _ = objective.backward(model, losses, ostate, generator=generator, epoch=epoch)
                session.optimizer.step()
                for t in tasks:
                    loss_sums[t] += float(losses[t].detach())
                steps += 1
        epsilon = session.epsilon(cfg.delta)
        history = session.accountant()
        session.close()
    finally:
        for p in named.values():
            p.requires_grad_(True)
    result = finish_local(model, names, loss_sums, steps, {"objective": ostate, "dp_sgd_history": history.history_tensor()})
    result.metrics["dp_sgd_epsilon"] = epsilon
    return result
