"""FedRep: learn a shared representation, personal heads trained first with the body frozen.

Collins, Hassani, Mokhtari, Shakkottai. "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import fork, start_from
from fedmtl.fl.personalization.fedper import FedPer
from fedmtl.registry import register


class FedRep(FedPer):
    """Per round: ``head_epochs`` epochs on the client's heads (trunk frozen), then ``client.epochs`` on the trunk.

    Heads stay on the client as in FedPer; only the trunk is uploaded.

    Args:
        head_epochs: epochs of the head-only phase.
    """

    name = "fedrep"

    def __init__(self, head_epochs: int):
        if head_epochs < 1:
            raise ValueError(f"FedRep head_epochs must be >= 1, got {head_epochs}")
        self.head_epochs = head_epochs

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        model = trainer.model
        begin = start_from(start, state)
        heads = [n for n in begin if self.private(model, n)]
        head = trainer.train(begin, client, state.training(), generator, trainable=heads, epochs=self.head_epochs)
        body_names = self.uploaded_names(model, client)
        body = trainer.train({**begin, **head.params}, client, head.state, fork(generator), trainable=body_names)
        metrics = {**body.metrics, "steps": head.metrics["steps"] + body.metrics["steps"]}
        return self.keep(model, LocalResult(body.params, metrics, body.state))


register("algorithm", "fedrep", lambda cfg, make_model: FedRep(cfg.head_epochs), acfg.FedRepAlgorithm)
