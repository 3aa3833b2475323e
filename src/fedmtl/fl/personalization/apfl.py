"""APFL: adaptive personalised federated learning, a learned mix of a local and the global model.

Deng, Kamani, Mahdavi. "Adaptive Personalized Federated Learning", arXiv:2003.13461, 2020, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import LocalObjective, is_local
from fedmtl.mtl import MultiTaskModel
from fedmtl.registry import register


class APFL(FedAvg):
    """Each step: ``w <- w - lr grad f(w)``; with ``vbar = alpha v + (1 - alpha) w``,
    ``v <- v - lr grad_v f(vbar)`` and ``alpha <- alpha - alpha_lr grad_alpha f(vbar)`` (clipped to [0, 1]).

    ``w`` is uploaded as in FedAvg; ``v`` and ``alpha`` stay on the client. The personal model is
    ``alpha v + (1 - alpha) w`` with the current global ``w``. Plain SGD at ``client.optimizer.lr``; ``f`` is
    the client's configured multi-task objective (``mtl``), balanced separately for ``w`` and for ``vbar``,
    and the gradients of ``v`` and ``alpha`` follow from ``grad f(vbar)`` by the chain rule.

    Args:
        alpha: initial mixing weight.
        alpha_lr: step size of ``alpha``.
    """

    name = "apfl"

    def __init__(self, alpha: float, alpha_lr: float):
        if not 0 <= alpha <= 1:
            raise ValueError(f"APFL alpha must be in [0, 1], got {alpha}")
        if not alpha_lr >= 0:
            raise ValueError(f"APFL alpha_lr must be >= 0, got {alpha_lr}")
        self.alpha, self.alpha_lr = alpha, alpha_lr

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        model, cfg = trainer.model, trainer.cfg
        names = held_parameter_names(model, client.tasks)
        own = state.algorithm
        w = {n: state.local.get(n, start[n]).detach().clone() for n in names}
        saved = own.get("apfl_v", {})
        v = {n: saved.get(n, w[n]).detach().clone() for n in names}
        alpha = own["apfl_alpha"].clone() if "apfl_alpha" in own else torch.tensor(self.alpha)
        lr = cfg.optimizer.lr
        obj_w = LocalObjective(trainer, client, state.objective)
        obj_mixed = LocalObjective(trainer, client, own.get("apfl_objective"))
        total, steps = torch.zeros(()), 0
        for epoch, batches in enumerate(batch_plan(len(client.train), cfg.batch_size, cfg.epochs, generator)):
            for idx in batches:
                gw, loss_w = obj_w.grads(w, idx, generator, epoch)
                mixed = {n: alpha * v[n] + (1 - alpha) * w[n] for n in names}
                gbar, _ = obj_mixed.grads(mixed, idx, generator, epoch)
                # vbar = alpha v + (1 - alpha) w: d/dv = alpha gbar, d/dalpha = <gbar, v - w>
                g_alpha = sum((gbar[n] * (v[n] - w[n])).sum() for n in names)
                v = {n: v[n] - lr * alpha * gbar[n] for n in names}
                w = {n: w[n] - lr * gw[n] for n in names}
                alpha = (alpha - self.alpha_lr * g_alpha).clamp(0.0, 1.0)
                total += loss_w
                steps += 1
        local = {n: t for n, t in w.items() if is_local(model, n)}
        new_state = ClientState(objective=obj_w.state, local=local).with_algorithm(
            {"apfl_v": v, "apfl_alpha": alpha, "apfl_objective": obj_mixed.state}
        )
        return LocalResult(w, {"loss/apfl": float(total) / max(steps, 1), "steps": float(steps)}, new_state)

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> dict[str, Tensor]:
        out = super().personal_params(model, global_params, client, state)
        own = state.algorithm
        if "apfl_v" in own:
            a = own["apfl_alpha"]
            for n, v in own["apfl_v"].items():
                out[n] = a * v + (1 - a) * out[n]
        return out


register("algorithm", "apfl", lambda cfg, make_model: APFL(cfg.alpha, cfg.alpha_lr), acfg.APFLAlgorithm)
