"""Per-round evaluation of a run: the global model on held-out data, personalised models per client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.fl.algorithm import Algorithm, Mixture
from fedmtl.fl.client import client_buffers, default_buffers, load_buffers, load_parameters
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.evaluation import evaluate, metric_sums, worst_mean
from fedmtl.mtl import MultiTaskModel
from fedmtl.tasks import add_sums, higher_is_better


def trains_global_model(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` trains the global model (``local`` does not: its clients never share).

    An algorithm says so with a class attribute ``trains_global_model = False``; the default is True.
    """
    return bool(getattr(algorithm, "trains_global_model", True))


def global_model_note(algorithm: Algorithm) -> str | None:
    """What the summary says instead of global metrics when there is no trained global model, else None."""
    if trains_global_model(algorithm):
        return None
    return (
        f"not trained: algorithm {algorithm.name!r} never aggregates (each client trains its own model); "
        "no global metrics are reported"
    )


def evaluate_global(
    model: MultiTaskModel,
    params: Mapping[str, Tensor],
    data: FederatedData,
    batch_size: int,
    buffers: Mapping[str, Tensor] | None = None,
    algorithm: Algorithm | None = None,
) -> dict[str, dict[str, float]]:
    """Per-task metrics of the global model on the server's held-out split (empty if there is none).

    ``buffers``: the BatchNorm running statistics to use (the experiment passes the mean of the clients'
    own, :func:`~fedmtl.fl.client.mean_buffers`); by default the initial ones. ``algorithm``: none are
    reported (empty) for one that never trains the global model (:func:`trains_global_model`): scores of
    the initial model would read as results.
    """
    if len(data.holdout) == 0 or (algorithm is not None and not trains_global_model(algorithm)):
        return {}
    load_buffers(model, dict(buffers) if buffers is not None else default_buffers(model))
    return evaluate(model, params, data.holdout, data.task_names, batch_size)


def personal_metric_sums(
    model: MultiTaskModel,
    algorithm: Algorithm,
    params: Mapping[str, Tensor],
    client: ClientData,
    state: ClientState,
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
    """The ``personalized`` block, per task, and the per-client rows, from each client's metric sums.

    Per task: ``pooled`` (every metric over all clients' local test rows together: their sums added, then
    finalised, so a client with 2 rows weighs 2 rows), ``clients`` (how many hold test rows of it), and the
    per-client distribution of each metric: ``median`` and ``worst10`` (mean of the worst 10 % of clients,
    at least one; the highest for loss, RMSE and MAE). A metric undefined for a client (R² on fewer than
    2 rows or equal targets, AUC with one label) is left out of the distribution and counted in
    ``undefined``. Kinds are never mixed: there is no score averaged over tasks.

    Rows: ``{"client": id, "rows": {task: test rows}, "tasks": {task: metrics}}``.
    """
    rows: list[dict[str, Any]] = []
    pooled: dict[str, dict[str, float]] = {}
    for cid in sorted(sums):
        held = {t: dict(s) for t, s in sums[cid].items() if s.get("n", 0) > 0}
        if not held:
            continue
        for t, s in held.items():
            pooled[t] = add_sums(pooled.get(t, {}), s)
        metrics = {t: model.tasks[t].finalize(s) for t, s in held.items()}
        rows.append({"client": cid, "rows": {t: int(s["n"]) for t, s in held.items()}, "tasks": metrics})
    block: dict[str, Any] = {}
    for t in sorted(pooled):
        block[t] = task_distribution(model.tasks[t].finalize(pooled[t]), [r["tasks"][t] for r in rows if t in r["tasks"]])
    return block, rows


def task_distribution(pooled: Mapping[str, float], per_client: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """One task's personalised results: its pooled metrics and, per metric, the clients' median and worst 10 %."""
    out: dict[str, Any] = {"pooled": dict(pooled), "clients": len(per_client), "median": {}, "worst10": {}}
    undefined: dict[str, int] = {}
    for name in pooled:
        values = [m[name] for m in per_client if m.get(name) is not None]
        if len(values) < len(per_client):
            undefined[name] = len(per_client) - len(values)
        if values:
            out["median"][name] = float(np.median(values))
            out["worst10"][name] = worst_mean(values, higher_is_better(name))
    if undefined:
        out["undefined"] = undefined
    return out


def evaluate_personalized(
    model: MultiTaskModel,
    algorithm: Algorithm,
    params: Mapping[str, Tensor],
    data: FederatedData,
    client_states: Mapping[int, ClientState],
    batch_size: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each client's personalised model on its own test split, for its own tasks.

    Returns the ``personalized`` block (per task: pooled metrics, per-client median and worst 10 %) and the
    per-client rows (:func:`summarize_personalized`).
    """
    sums = {
        client.client_id: personal_metric_sums(
            model, algorithm, params, client, client_states.get(client.client_id) or ClientState(), batch_size
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
