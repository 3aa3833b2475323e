"""pFedMe: personalised models as Moreau envelopes of the local loss around the local copy of the global model.

Dinh, Tran, Nguyen. "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020, Algorithm 1.
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
from fedmtl.fl.personalization._common import LocalObjective
from fedmtl.registry import register


class PFedMe(FedAvg):
    """Per minibatch: ``inner_steps`` gradient steps on ``theta`` for ``f(theta) + lam/2 ||theta - w||^2``,
    then ``w <- w - lr * lam * (w - theta)``. ``w`` is uploaded; ``theta`` is the personal model.

    The server's ``beta`` of the paper is ``server.optimizer.lr``. ``f`` is the client's configured
    multi-task objective (``mtl``: any scheme and balancer).

    Args:
        lam: regularisation strength of the Moreau envelope.
        inner_steps: steps on ``theta`` per minibatch (the paper's K).
        personal_lr: step size of those steps.
    """

    name = "pfedme"

    def __init__(self, lam: float, inner_steps: int, personal_lr: float):
        if not lam > 0 or inner_steps < 1 or not personal_lr > 0:
            raise ValueError(f"pFedMe needs lam > 0, inner_steps >= 1, personal_lr > 0; got {lam}, {inner_steps}, {personal_lr}")
        self.lam, self.inner_steps, self.personal_lr = lam, inner_steps, personal_lr

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        model, cfg = trainer.model, trainer.cfg
        names = held_parameter_names(model, client.tasks)
        w = {n: start[n].detach().clone() for n in names}
        theta = {n: t.clone() for n, t in w.items()}
        objective = LocalObjective(trainer, client, state.objective)
        lr = cfg.optimizer.lr
        total, steps = torch.zeros(()), 0
        for epoch, batches in enumerate(batch_plan(len(client.train), cfg.batch_size, cfg.epochs, generator)):
            for idx in batches:
                for _ in range(self.inner_steps):
                    grads, loss = objective.grads(theta, idx, generator, epoch)
                    theta = {n: theta[n] - self.personal_lr * (grads[n] + self.lam * (theta[n] - w[n])) for n in names}
                w = {n: w[n] - lr * self.lam * (w[n] - theta[n]) for n in names}
                total += loss
                steps += 1
        metrics = {"loss/pfedme": float(total) / max(steps, 1), "steps": float(steps)}
        return LocalResult(w, metrics, ClientState(objective=objective.state).with_algorithm({"personal": theta}))


register("algorithm", "pfedme", lambda cfg, make_model: PFedMe(cfg.lam, cfg.inner_steps, cfg.personal_lr), acfg.PFedMeAlgorithm)
