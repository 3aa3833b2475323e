"""Per-round evaluation of a run: the global model on held-out data, personalised models per client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.fl.algorithm import Algorithm, Mixture
from fedmtl.fl.client import client_buffers, default_buffers, load_buffers, load_parameters
from fedmtl.fl.evaluation import evaluate, metric_sums, summarize_clients
from fedmtl.mtl import MultiTaskModel
from fedmtl.tasks import add_sums
from fedmtl.tree import TensorTree


def evaluate_global(
    model: MultiTaskModel, params: Mapping[str, Tensor], data: FederatedData, batch_size: int, buffers: Mapping[str, Tensor] | None = None
) -> dict[str, dict[str, float]]:
    """Per-task metrics of the global model on the server's held-out split (empty if there is none).

    ``buffers``: the BatchNorm running statistics to use (the experiment passes the mean of the clients'
    own, :func:`~fedmtl.fl.client.mean_buffers`); by default the initial ones.
    """
    if len(data.holdout) == 0:
        return {}
    load_buffers(model, dict(buffers) if buffers is not None else default_buffers(model))
    return evaluate(model, params, data.holdout, data.task_names, batch_size)


def personal_metric_sums(
    model: MultiTaskModel,
    algorithm: Algorithm,
    params: Mapping[str, Tensor],
    client: ClientData,
    state: TensorTree,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Additive metric sums (:meth:`Task.metric_sums`) of a client's personalised model on its test split, per task.

    What a deployed node computes and sends (sums, so the server finalises exactly what the simulation does).
    """
    if len(client.test) == 0:
        return {}
    load_buffers(model, client_buffers(model, state))  # its own BatchNorm statistics (FedBN), else the initial ones
    mixture = algorithm.personal_mixture(model, params, client, state)
    if mixture is None:
        load_parameters(model, algorithm.personal_params(model, params, client, state))
        return metric_sums(model, client.test, client.tasks, batch_size)
    return mixture_sums(model, mixture, client.test, client.tasks, batch_size)


def summarize_personalized(
    model: MultiTaskModel, sums: Mapping[int, Mapping[str, Mapping[str, float]]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``personalized`` block (mean, worst 10 %, per-task means) and per-client rows from each client's sums.

    A client's score is the mean over its tasks of the primary metric (accuracy, or R^2).
    """
    rows: list[dict[str, Any]] = []
    for cid in sorted(sums):
        metrics = {t: model.tasks[t].finalize(dict(s)) for t, s in sums[cid].items() if s.get("n", 0) > 0}
        if not metrics:
            continue
        primary = {t: m[model.tasks[t].primary_metric] for t, m in metrics.items()}
        rows.append({"client": cid, "score": sum(primary.values()) / len(primary), "tasks": primary})
    summary: dict[str, Any] = summarize_clients(rows)
    per_task: dict[str, list[float]] = {}
    for row in rows:
        for t, v in row["tasks"].items():
            per_task.setdefault(t, []).append(v)
    summary["per_task"] = {t: sum(v) / len(v) for t, v in per_task.items()}
    return summary, rows


def evaluate_personalized(
    model: MultiTaskModel,
    algorithm: Algorithm,
    params: Mapping[str, Tensor],
    data: FederatedData,
    client_states: Mapping[int, TensorTree],
    batch_size: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each client's personalised model on its own test split, for its own tasks.

    A client's score is the mean over its tasks of the primary metric (accuracy, or R^2).
    Returns the summary (mean, worst 10 %, per-task means) and the per-client rows.
    """
    sums = {
        client.client_id: personal_metric_sums(
            model, algorithm, params, client, client_states.get(client.client_id, {}), batch_size
        )
        for client in data.clients
    }
    return summarize_personalized(model, sums)


@torch.no_grad()
def mixture_sums(model: MultiTaskModel, mixture: Mixture, split: Split, tasks: tuple[str, ...] | list[str], batch_size: int) -> dict[str, dict[str, float]]:
    """Additive metric sums of a mixture of models (FedEM) per task: each input's predictions are
    mixed with that input's weights."""
    model.eval()
    sums: dict[str, dict[str, float]] = {t: {} for t in tasks}
    for start in range(0, len(split), batch_size):
        x = split.x[start : start + batch_size]
        weights = mixture.weights(x)  # [n, K]
        mixed: dict[str, Tensor] = {}
        for k, params in enumerate(mixture.components):
            load_parameters(model, params)
            for t, pred in model(x, list(tasks)).items():
                kind = model.tasks[t].kind
                p = pred.softmax(-1) if kind == "multiclass" else pred.sigmoid() if kind == "binary" else pred
                w = weights[:, k].reshape(-1, *([1] * (p.dim() - 1)))
                mixed[t] = mixed.get(t, 0) + w * p  # type: ignore[operator]
        for t in tasks:
            kind = model.tasks[t].kind
            p = mixed[t]
            if kind == "multiclass":
                p = p.clamp_min(1e-12).log()
            elif kind == "binary":
                p = p.clamp(1e-7, 1 - 1e-7).logit()
            sums[t] = add_sums(sums[t], model.tasks[t].metric_sums(p, split.y[t][start : start + batch_size]))
    return sums
