"""Evaluation of the global model on held-out data and of personalised models on clients' test splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fedmtl.data.dataset import Split
from fedmtl.fl.client import load_parameters
from fedmtl.mtl import MultiTaskModel
from fedmtl.tasks import add_sums


@torch.no_grad()
def metric_sums(model: MultiTaskModel, split: Split, tasks: Sequence[str], batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Additive metric statistics per task over a split (sums, so they add across clients exactly)."""
    model.eval()
    out: dict[str, dict[str, float]] = {t: {} for t in tasks}
    for start in range(0, len(split), batch_size):
        x = split.x[start : start + batch_size]
        preds = model(x, list(tasks))
        for t in tasks:
            out[t] = add_sums(out[t], model.tasks[t].metric_sums(preds[t], split.y[t][start : start + batch_size]))
    return out


def evaluate(
    model: MultiTaskModel, params: Mapping[str, Tensor], split: Split, tasks: Sequence[str], batch_size: int = 1024
) -> dict[str, dict[str, float]]:
    """Per-task metrics (loss, accuracy or R^2, ...) of ``params`` on ``split``."""
    load_parameters(model, params)
    sums = metric_sums(model, split, tasks, batch_size)
    return {t: model.tasks[t].finalize(s) for t, s in sums.items() if s.get("n", 0) > 0}


def worst_mean(values: Sequence[float] | np.ndarray, higher_is_better: bool = True, worst_fraction: float = 0.1) -> float:
    """Mean of the worst ``worst_fraction`` of ``values`` (at least one): the lowest for a score, the highest
    for an error (``higher_is_better=False``). How well the federation serves the clients it serves worst."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if not higher_is_better:
        ordered = ordered[::-1]
    k = max(1, int(np.ceil(worst_fraction * ordered.size)))
    return float(ordered[:k].mean())


def summarize_clients(per_client: Sequence[Mapping[str, float]], worst_fraction: float = 0.1) -> dict[str, float]:
    """Mean, worst-10 % mean, median and spread of one per-client score (``row["score"]``, higher is better).

    Only for a score of one kind (accuracy of classification tasks, say); the run's personalised results
    are per task (:func:`fedmtl.runloop.evaluation.summarize_personalized`).
    """
    values = np.array([v["score"] for v in per_client], dtype=float)
    if values.size == 0:
        return {}
    return {
        "mean": float(values.mean()),
        "worst10": worst_mean(values, True, worst_fraction),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
