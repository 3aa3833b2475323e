"""Per-round evaluation of a run: the global model on held-out data, personalised models per client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fedmtl.data.dataset import FederatedData
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.evaluation import evaluate, summarize_clients
from fedmtl.mtl import MultiTaskModel
from fedmtl.tree import TensorTree


def evaluate_global(model: MultiTaskModel, params: Mapping[str, Tensor], data: FederatedData, batch_size: int) -> dict[str, dict[str, float]]:
    """Per-task metrics of the global model on the server's held-out split (empty if there is none)."""
    if len(data.holdout) == 0:
        return {}
    return evaluate(model, params, data.holdout, data.task_names, batch_size)


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
    rows: list[dict[str, Any]] = []
    for client in data.clients:
        if len(client.test) == 0:
            continue
        personal = algorithm.personal_params(model, params, client, client_states.get(client.client_id, {}))
        metrics = evaluate(model, personal, client.test, client.tasks, batch_size)
        if not metrics:
            continue
        primary = {t: m[model.tasks[t].primary_metric] for t, m in metrics.items()}
        rows.append({"client": client.client_id, "score": sum(primary.values()) / len(primary), "tasks": primary})
    summary: dict[str, Any] = summarize_clients(rows)
    per_task: dict[str, list[float]] = {}
    for row in rows:
        for t, v in row["tasks"].items():
            per_task.setdefault(t, []).append(v)
    summary["per_task"] = {t: sum(v) / len(v) for t, v in per_task.items()}
    return summary, rows
