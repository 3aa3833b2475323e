"""Ditto: a personal model pulled towards the global one, the global one trained as FedAvg.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.client import LocalResult, LocalTrainer, Prox, TrainRequest
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import start_from
from fedmtl.fl.seeding import spawn
from fedmtl.registry import register


class Ditto(FedAvg):
    """Global ``w``: FedAvg's local training (same batches). Personal ``v_k``: ``F_k(v) + lam/2 ||v - w||^2``.

    The personal step is proximal SGD (the pull applied implicitly after each step), so ``lam -> inf``
    pins ``v_k`` to the received ``w`` (FedAvg) and ``lam = 0`` is local training of ``v_k`` alone.

    Args:
        lam: pull towards the global model (>= 0).
        personal_epochs: epochs on ``v_k`` per round (default: ``client.epochs``).
    """

    name = "ditto"

    def __init__(self, lam: float, personal_epochs: int | None = None):
        if not lam >= 0:
            raise ValueError(f"Ditto lam must be >= 0, got {lam}")
        self.lam = lam
        self.personal_epochs = personal_epochs

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        names = self.uploaded_names(trainer.model, client)
        # the personal model's own objective state; local parameters shared with the global one
        pstate = ClientState(objective=state.algorithm.get("personal_objective", {}), local=state.local)
        prox = Prox({n: start[n] for n in names}, self.lam, implicit=True)
        # the two trainings are independent (both start from what the client received): asked for together, an
        # engine that batches clients trains them in one computation; the personal stream is spawned, so the
        # global model draws exactly FedAvg's batches
        personal_gen = spawn(generator, "ditto/personal")
        glob, pers = trainer.train_each([
            TrainRequest(start, client, state.training(), generator),
            TrainRequest(start_from(start, state), client, pstate, personal_gen, prox=prox, epochs=self.personal_epochs),
        ])
        personal = {n: pers.params[n] for n in names}
        return LocalResult(glob.params, glob.metrics, glob.state.with_algorithm({"personal": personal, "personal_objective": pers.state.objective}))


register("algorithm", "ditto", lambda cfg, make_model: Ditto(cfg.lam, cfg.personal_epochs), acfg.DittoAlgorithm)
