"""SCAFFOLD: client-drift correction with control variates (option II).

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.config.training import SGD
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg, ServerContext
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def control_variate_step(
    c: Mapping[str, Tensor], c_i: Mapping[str, Tensor], start: Mapping[str, Tensor], trained: Mapping[str, Tensor], steps: int, lr: float
) -> dict[str, Tensor]:
    """Option II: ``c_i+ = c_i - c + (x - y_i) / (K * lr)``."""
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    return {n: c_i[n] - c[n] + (start[n] - trained[n]) / (steps * lr) for n in c_i}


class Scaffold(FedAvg):
    """Local steps ``y <- y - lr (g(y) - c_i + c)``; the server keeps ``c``, each client its ``c_i``.

    The server moves ``c`` by ``(1/N) sum_i (c_i+ - c_i)`` over the cohort, per parameter with ``N`` the
    number of clients holding it (every client for the trunk, a task's holders for its head); the global
    model takes the usual aggregated step (global step size = ``server.optimizer.lr``). Each client's
    ``c_i+ - c_i`` travels in its outbox, encoded by the uplink chain (counted in ``bytes_up``).
    """

    name = "scaffold"

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        return {"c": {n: torch.zeros_like(p) for n, p in params.items()}}

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        opt = trainer.cfg.optimizer
        if not isinstance(opt, SGD) or opt.momentum != 0:
            raise ValueError(f"SCAFFOLD needs client.optimizer sgd with momentum 0, got {opt!r}")
        names = self.uploaded_names(trainer.model, client)
        c_all = state.server.get("c", {})
        c = {n: c_all.get(n, torch.zeros_like(start[n])) for n in names}
        own = state.algorithm.get("scaffold_c", {})
        c_i = {n: own.get(n, torch.zeros_like(start[n])) for n in names}
        res = trainer.train(start, client, state.training(), generator, grad_offset={n: c[n] - c_i[n] for n in names})
        c_new = control_variate_step(c, c_i, start, res.params, int(res.metrics["steps"]), opt.lr)
        delta = {n: c_new[n] - c_i[n] for n in names}
        return LocalResult(res.params, res.metrics, res.state.with_algorithm({"scaffold_c": c_new}), {"delta_c": delta})

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        c = dict(ctx.state["c"])
        sums: dict[str, Tensor] = {}
        for u in ctx.updates:
            for n, d in ctx.outboxes.get(u.client_id, {}).get("delta_c", {}).items():
                sums[n] = d if n not in sums else sums[n] + d
        for n, s in sums.items():
            c[n] = c[n] + s / max(ctx.population.get(n, 1), 1)
        return dict(ctx.after), {"c": c}


register("algorithm", "scaffold", lambda cfg, make_model: Scaffold(), acfg.ScaffoldAlgorithm)
