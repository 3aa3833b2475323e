"""FedProx: local training with a proximal term towards the global model.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg, without_server
from fedmtl.fl.client import LocalResult, LocalTrainer, Prox
from fedmtl.fl.client_state import ClientState
from fedmtl.registry import register


class FedProx(FedAvg):
    """Minimise ``F_k(w) + mu/2 ||w - w_global||^2`` locally; ``mu = 0`` is exactly FedAvg.

    Args:
        mu: proximal weight (>= 0).
    """

    name = "fedprox"

    def __init__(self, mu: float):
        if not mu >= 0:
            raise ValueError(f"FedProx mu must be >= 0, got {mu}")
        self.mu = mu

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        center = {n: start[n] for n in self.uploaded_names(trainer.model, client)}
        return trainer.train(start, client, without_server(state), generator, prox=Prox(center, self.mu))


register("algorithm", "fedprox", lambda cfg, make_model: FedProx(cfg.mu), acfg.FedProxAlgorithm)
