"""MOCHA-style federated multi-task learning: personal heads coupled by a learned task-relationship matrix.

Smith, Chiang, Sanjabi, Talwalkar. "Federated Multi-Task Learning", NeurIPS 2017; the Omega update is
Zhang and Yeung's closed form ("A Convex Formulation for Learning Task Relationships in Multi-Task
Learning", UAI 2010).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg, ServerContext
from fedmtl.fl.client import LocalResult, LocalTrainer, Prox
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import start_from
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def omega_update(w: Tensor, eps: float = 0.0) -> Tensor:
    """``Omega = (W^T W)^(1/2) / tr((W^T W)^(1/2))`` with one column of ``W`` per client.

    Args:
        w: ``[m, d]``: one row per client (so ``W^T W`` is ``w @ w.T``, ``[m, m]``).
        eps: ridge ``eps * mean(diag(w w^T))`` added before the square root (0: the exact closed form).
    """
    g = (w @ w.T).double()
    if eps > 0:
        g = g + eps * g.diagonal().mean().clamp_min(1e-12) * torch.eye(g.shape[0], dtype=g.dtype)
    e, u = torch.linalg.eigh(g)
    root = (u * e.clamp_min(0).sqrt()) @ u.T
    omega: Tensor = (root / root.trace()).to(w.dtype)
    return omega


def coupling(omega: Tensor, w: Tensor, row: int) -> tuple[float, Tensor]:
    """For client ``row``: ``a = (Omega^-1)_tt`` and ``b = sum_{s != t} (Omega^-1)_ts w_s``.

    The gradient of ``tr(W Omega^-1 W^T)`` in ``w_t`` is ``2 (a w_t + b)``: a pull of weight ``2a``
    towards ``-b / a``.
    """
    inv = torch.linalg.pinv(omega.double()).to(w.dtype)
    others = inv[row].clone()
    others[row] = 0
    return float(inv[row, row]), others @ w


class Mocha(FedAvg):
    """Each client (one "task" of the MTL problem) keeps personal heads ``w_t``; the trunk is FedAvg.

    For every task head the server keeps ``W`` (a row per client: its latest personal head, flattened),
    which rows are known, and ``Omega`` over the known rows, updated in closed form each round
    (:func:`omega_update`). A client trains its heads on its loss plus ``lam * tr(W Omega^-1 W^T)``
    with the other clients' rows fixed: a proximal pull of weight ``2 lam a`` towards ``-b / a``
    (:func:`coupling`). Heads are uploaded as usual (their deltas give the server ``w_t``); ``W`` and
    ``Omega`` are broadcast through the downlink codecs (counted in ``bytes_down``). A client's personal model is the global trunk with its
    own heads.

    Args:
        lam: regulariser weight.
        eps: relative ridge of the Omega update.
    """

    name = "mocha"

    def __init__(self, lam: float, eps: float):
        if not lam >= 0 or not eps > 0:
            raise ValueError(f"MOCHA needs lam >= 0 and eps > 0, got lam={lam}, eps={eps}")
        self.lam, self.eps = lam, eps

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        return {"clients": torch.tensor(num_clients), "tasks": {}}

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        model = trainer.model
        names = self.uploaded_names(model, client)
        begin = start_from(start, state)
        tasks_state = state.server.get("tasks", {})
        center: dict[str, Tensor] = {}
        weight: dict[str, float] = {}
        t = client.client_id
        for task in client.tasks:
            entry = tasks_state.get(task)
            if entry is None or not bool(entry["seen"][t]):
                continue
            known = entry["seen"].nonzero().flatten()
            row = int((known == t).nonzero())
            a, b = coupling(entry["omega"][known][:, known], entry["W"][known], row)
            target = -b / a if a > 0 else torch.zeros_like(b)
            head = [n for n in names if model.group_of(n) == f"task:{task}"]
            offset = 0
            for n in head:
                k = begin[n].numel()
                center[n] = target[offset : offset + k].view_as(begin[n])
                weight[n] = 2 * self.lam * a
                offset += k
        prox = Prox(center, weight, implicit=True) if center else None
        res = trainer.train(begin, client, state.training(), generator, prox=prox)
        personal = {n: v for n, v in res.params.items() if model.group_of(n).startswith("task:")}
        return LocalResult(res.params, res.metrics, res.state.with_algorithm({"personal": personal}))

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        n_clients = int(ctx.state["clients"])
        tasks = dict(ctx.state["tasks"])
        for group, names in ctx.groups.items():
            if not group.startswith("task:"):
                continue
            task = group[5:]
            holders = [u for u in ctx.updates if all(n in u.delta for n in names)]
            if not holders and task not in tasks:
                continue
            d = sum(ctx.before[n].numel() for n in names)
            old = tasks.get(task) or {"W": torch.zeros(n_clients, d), "seen": torch.zeros(n_clients, dtype=torch.bool), "omega": torch.zeros(n_clients, n_clients)}
            w, seen = old["W"].clone(), old["seen"].clone()
            for u in holders:
                w[u.client_id] = torch.cat([(ctx.before[n] + u.delta[n]).reshape(-1) for n in names])
                seen[u.client_id] = True
            known = seen.nonzero().flatten()
            omega = torch.zeros(n_clients, n_clients)
            omega[known[:, None], known[None, :]] = omega_update(w[known], self.eps)
            tasks[task] = {"W": w, "seen": seen, "omega": omega}
        return dict(ctx.after), {"clients": ctx.state["clients"], "tasks": tasks}


register("algorithm", "mocha", lambda cfg, make_model: Mocha(cfg.lam, cfg.eps), acfg.MochaAlgorithm)
