"""Local-only training: the reference point with no federation at all."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import start_from
from fedmtl.registry import register


class LocalOnly(FedAvg):
    """Each client trains its own model from the common initialisation; the global model never moves.

    The client's model lives in its algorithm slot (``personal``). The client reports a zero update (its uploaded
    parameters equal to what it received), so the aggregate is exactly zero. (An empty upload would be
    the natural encoding, but the links cannot round-trip an empty payload today.)
    """

    name = "local"
    #: the global model stays the initial one: evaluation reports no global metrics for it
    trains_global_model = False

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        begin = start_from(start, state)
        res = trainer.train(begin, client, state.training(), generator)
        reported = {**res.params, **{n: start[n] for n in self.uploaded_names(trainer.model, client)}}
        return LocalResult(reported, res.metrics, res.state.with_algorithm({"personal": res.params}))


register("algorithm", "local", lambda cfg, make_model: LocalOnly(), acfg.LocalOnlyAlgorithm)
