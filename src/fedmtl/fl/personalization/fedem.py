"""FedEM: each client's data distribution a mixture of K shared component models, fitted by federated EM.

Marfoq, Neglia, Bellet, Kameni, Vidal. "Federated Multi-Task Learning under a Mixture of
Distributions", NeurIPS 2021, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import OUTBOX_KEY, SERVER_KEY, FedAvg, Mixture, ServerContext
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.personalization._common import LocalObjective, average_members, client_loss, shuffled
from fedmtl.mtl import MultiTaskModel
from fedmtl.tree import TensorTree


def e_step(losses: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
    """Responsibilities ``q[k, i] ∝ pi_k exp(-loss_k(i))`` and the new mixture weights ``pi = mean_i q``.

    Args:
        losses: ``[K, n]`` per-sample losses (negative log-likelihoods) of each component.
        pi: ``[K]`` current mixture weights.
    """
    q = torch.softmax(pi.clamp_min(1e-12).log()[:, None] - losses, dim=0)
    return q, q.mean(dim=1)


class FedEM(FedAvg):
    """K components: component 0 is the global model (aggregated as usual), components 1..K-1 live in
    the server state and are averaged among the cohort. Per round a client runs the E-step on its
    training data (responsibilities, its weights ``pi``), then the M-step: ``client.epochs`` epochs of
    SGD on each component with per-sample losses weighted by the responsibilities, balanced across
    the client's tasks by its configured multi-task objective (``mtl``; one objective state per component).
    The E-step's likelihoods are the plain sums of the task losses.

    The personal model is the mixture ``sum_k pi_k p_k(y | x)`` of the client's last trained components.
    Components 1..K-1 travel through the codecs both ways (counted in ``bytes_down`` / ``bytes_up``).

    Args:
        components: number of components K (>= 2).
    """

    name = "fedem"
    vectorizable = False

    def __init__(self, components: int):
        if components < 2:
            raise ValueError(f"FedEM needs components >= 2, got {components}")
        self.k = components

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        return {"components": {str(k): shuffled(params, generator) for k in range(1, self.k)}}  # type: ignore[dict-item]

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: TensorTree, generator: torch.Generator
    ) -> LocalResult:
        model, cfg = trainer.model, trainer.cfg
        names = held_parameter_names(model, client.tasks)
        tasks = list(client.tasks)
        served = state[SERVER_KEY]["components"]  # type: ignore[index]
        comps = [{n: start[n].detach().clone() for n in names}] + [{n: served[str(k)][n].clone() for n in names} for k in range(1, self.k)]  # type: ignore[index]
        pi = state["fedem_pi"] if "fedem_pi" in state else torch.full((self.k,), 1.0 / self.k)
        with torch.no_grad():
            losses = torch.stack([client_loss(model, c, client.train, tasks, per_sample=True) for c in comps])
        q, pi = e_step(losses, pi)  # type: ignore[arg-type]
        lr = cfg.optimizer.lr
        plan = batch_plan(len(client.train), cfg.batch_size, cfg.epochs, generator)
        saved = state.get("fedem_objective", {})
        objectives = [LocalObjective(trainer, client, saved, str(k)) for k in range(self.k)]  # type: ignore[arg-type]
        total, steps = torch.zeros(()), 0
        for k in range(self.k):
            for epoch, batches in enumerate(plan):
                for idx in batches:
                    grads, loss = objectives[k].grads(comps[k], idx, generator, epoch, weights=q[k, idx])
                    comps[k] = {n: comps[k][n] - lr * grads[n] for n in names}
                    total += loss
                    steps += 1
        new_state: TensorTree = {
            "fedem_pi": pi,
            "fedem_objective": {str(k): o.state for k, o in enumerate(objectives)},
            "fedem_components": {str(k): c for k, c in enumerate(comps)},  # type: ignore[dict-item]
            OUTBOX_KEY: {"components": {str(k): comps[k] for k in range(1, self.k)}},  # type: ignore[dict-item]
        }
        return LocalResult(comps[0], {"loss/fedem": float(total) / max(steps, 1), "steps": float(steps)}, new_state)

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        comps = ctx.state["components"]
        out = {}
        for key, cmodel in comps.items():  # type: ignore[union-attr]
            members = [(u, ctx.outboxes[u.client_id]["components"][key]) for u in ctx.updates if u.client_id in ctx.outboxes]  # type: ignore[index]
            out[key] = average_members(cmodel, members, ctx.groups)  # type: ignore[arg-type]
        return dict(ctx.after), {"components": out}  # type: ignore[dict-item]

    def personal_mixture(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: TensorTree
    ) -> Mixture | None:
        if "fedem_components" not in state:
            return None
        pi = state["fedem_pi"]
        comps = state["fedem_components"]
        return [(float(pi[k]), {**global_params, **comps[str(k)]}) for k in range(self.k)]  # type: ignore[index, dict-item]
