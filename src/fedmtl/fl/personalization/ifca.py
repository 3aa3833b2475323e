"""IFCA: iterative federated clustering; each client joins the cluster model with the lowest local loss.

Ghosh, Chung, Yin, Ramchandran. "An Efficient Framework for Clustered Federated Learning", NeurIPS 2020, Algorithm 2.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg, ServerContext
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import average_members, client_loss, shuffled
from fedmtl.mtl import MultiTaskModel
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class IFCA(FedAvg):
    """``k`` cluster models in the server state (cluster 0 starts at the global initialisation, the others
    at permuted copies). A client evaluates every cluster model on its training data, trains the best
    one and reports its choice (``metrics["cluster"]``); each cluster model moves to the mean of its
    members' models, per parameter group. The global model is the usual average of all clients.

    Clients download all ``k`` models (through the downlink codecs, counted in ``bytes_down``).

    Args:
        clusters: number of cluster models ``k``.
        personal_model: the client's model at evaluation. ``"trained"``: the one it ended its last round
            with (its cluster's model after its own local training, possibly several rounds old);
            ``"cluster"``: re-pick now, the current cluster model with the lowest loss on its training
            data (Ghosh et al.'s inference rule; needs the server state the client would receive).
    """

    name = "ifca"

    def __init__(self, clusters: int, personal_model: str = "trained"):
        if clusters < 1:
            raise ValueError(f"IFCA needs clusters >= 1, got {clusters}")
        if personal_model not in ("trained", "cluster"):
            raise ValueError(f"IFCA personal_model must be 'trained' or 'cluster', got {personal_model!r}")
        self.clusters, self.personal_model = clusters, personal_model

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        models = {str(j): (dict(params) if j == 0 else shuffled(params, generator)) for j in range(self.clusters)}
        return {"clusters": models}

    def choose(self, model: MultiTaskModel, clusters: Mapping[str, Mapping[str, Tensor]], client: ClientData) -> int:
        """The cluster whose model has the lowest training loss on the client's data."""
        names = held_parameter_names(model, client.tasks)
        with torch.no_grad():
            losses = [float(client_loss(model, {n: clusters[str(j)][n] for n in names}, client.train, client.tasks)) for j in range(len(clusters))]
        return min(range(len(losses)), key=losses.__getitem__)

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        clusters = state.server["clusters"]
        j = self.choose(trainer.model, clusters, client)
        names = held_parameter_names(trainer.model, client.tasks)
        begin = {**start, **{n: clusters[str(j)][n] for n in names}}
        res = trainer.train(begin, client, state.training(), generator)
        return LocalResult(res.params, {**res.metrics, "cluster": float(j)}, res.state.with_algorithm({"personal": res.params, "cluster": torch.tensor(j)}))

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        clusters = ctx.state["clusters"]
        out = {}
        for key, cmodel in clusters.items():
            members = [
                (u, {n: ctx.before[n] + d for n, d in u.delta.items()}) for u in ctx.updates if int(u.metrics.get("cluster", -1)) == int(key)
            ]
            out[key] = average_members(cmodel, members, ctx.groups)
        return dict(ctx.after), {"clusters": out}

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> dict[str, Tensor]:
        base = super().personal_params(model, global_params, client, state)
        clusters = state.server.get("clusters")
        if self.personal_model == "cluster" and clusters:
            j = self.choose(model, clusters, client)
            return {**base, **{n: clusters[str(j)][n] for n in held_parameter_names(model, client.tasks)}}
        return base


register("algorithm", "ifca", lambda cfg, make_model: IFCA(cfg.clusters, cfg.personal_model), acfg.IFCAAlgorithm)
