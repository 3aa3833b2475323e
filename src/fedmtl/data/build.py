"""From a data config to a :class:`FederatedData`: load, hold out, partition, assign tasks, preprocess."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from fedmtl.config import data as dcfg
from fedmtl.data import assignment, partition
from fedmtl.data.cleaning import CleaningCounts, CleaningReport, SmallClients
from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.data.preprocessing import Moments, clean, normalize, rows_by_features, transform
from fedmtl.data.small_clients import apply_min_size
from fedmtl.data.source import DataError, SourceData
from fedmtl.data.sources import load_source
from fedmtl.tasks import MISSING_CLASS, Task

log = logging.getLogger("fedmtl")


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _partition_labels(src: SourceData, task_name: str | None) -> np.ndarray:
    cls = [t for t in src.tasks if t.is_classification]
    if task_name is not None:
        if task_name not in src.targets:
            raise DataError(f"data.partition.task {task_name!r} is not a task; tasks are {[t.name for t in src.tasks]}")
        name = task_name
    elif cls:
        name = cls[0].name
    else:
        raise DataError("label-skew partitions need a classification task; use iid, quantity_skew or natural")
    y = src.targets[name]
    return np.where(np.isfinite(y), y, -1).astype(np.int64)


def split_rows(cfg: dcfg.DataConfig, src: SourceData, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each client, by the configured partitioner."""
    p = cfg.partition
    n = src.x.shape[0]
    if isinstance(p, dcfg.NaturalPartition):
        if src.client_ids is None:
            raise DataError("partition 'natural' needs client ids in the data (a client column)")
        return partition.natural(src.client_ids)
    if src.client_ids is not None:
        given = (
            f"data.source.client_column {cfg.source.client_column!r}" if isinstance(cfg.source, dcfg.TableSource) else "the source's client ids"
        )
        log.warning(
            "%s ignored: data.partition is %r, which deals rows to data.num_clients=%d clients by its own rule; "
            "use data.partition {name: natural} to keep the data's own clients",
            given, p.name, cfg.num_clients,
        )
    if isinstance(p, dcfg.IIDPartition):
        return partition.iid(n, cfg.num_clients, rng)
    if isinstance(p, dcfg.QuantitySkewPartition):
        return partition.quantity_skew(n, cfg.num_clients, p.alpha, rng, p.min_size)
    labels = _partition_labels(src, p.task)
    if isinstance(p, dcfg.DirichletPartition):
        return partition.dirichlet(labels, cfg.num_clients, p.alpha, rng, p.min_size)
    return partition.shards(labels, cfg.num_clients, p.classes_per_client, rng)


def assign_tasks(cfg: dcfg.DataConfig, names: list[str], num_clients: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    a = cfg.task_assignment
    if isinstance(a, dcfg.AllTasks):
        return assignment.all_tasks(num_clients, names)
    if isinstance(a, dcfg.RandomTaskSubset):
        return assignment.random_subset(num_clients, names, a.tasks_per_client, rng)
    return assignment.explicit(num_clients, names, a.clients)


def _holdout(cfg: dcfg.DataConfig, src: SourceData, rng: np.random.Generator) -> tuple[SourceData, np.ndarray, dict[str, np.ndarray]]:
    """Split off the server's held-out rows unless the source brings its own test split."""
    if src.holdout_x is not None and src.holdout_targets is not None:
        return src, src.holdout_x, src.holdout_targets
    frac = getattr(cfg.source, "holdout_fraction", 0.0)
    n = src.x.shape[0]
    k = int(round(frac * n))
    perm = rng.permutation(n)
    held, kept = np.sort(perm[:k]), np.sort(perm[k:])
    rest = SourceData(
        x=src.x[kept],
        targets={t: v[kept] for t, v in src.targets.items()},
        tasks=src.tasks,
        client_ids=None if src.client_ids is None else src.client_ids[kept],
        description=src.description,
        client_names=src.client_names,
    )
    return rest, src.x[held], {t: v[held] for t, v in src.targets.items()}


def _to_split(x: np.ndarray, targets: dict[str, np.ndarray], tasks: tuple[Task, ...]) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        {t.name: _target_tensor(t, targets[t.name]) for t in tasks},
    )


def build_federated_data(cfg: dcfg.DataConfig, seed: int, source: SourceData | None = None) -> FederatedData:
    """Build the federation described by ``cfg`` (or from a given source: a user's arrays).

    Deterministic under ``seed``: the hold-out, the partition, the task assignment and the local
    train/test splits each draw from their own stream of one ``SeedSequence``.
    """
    r_hold, r_part, r_tasks, r_split = _streams(seed, 4)
    src = source if source is not None else load_source(cfg.source, seed)
    src, hx, hy = _holdout(cfg, src, r_hold)
    rows = split_rows(cfg, src, r_part)
    names = [t.name for t in src.tasks]
    task_sets = assign_tasks(cfg, names, len(rows), r_tasks)
    pre = cfg.preprocessing
    per_feature = src.x.ndim <= 2
    task_by_name = {t.name: t for t in src.tasks}
    rows, task_sets, targets, small = _min_size(cfg, src, rows, task_sets)

    raw_clients = []
    for cid, (idx, held) in enumerate(zip(rows, task_sets)):
        idx = r_split.permutation(idx)
        n_test = int(round(cfg.test_fraction * len(idx))) if len(idx) > 1 else 0
        parts = {"test": idx[:n_test], "train": idx[n_test:]}
        tasks = tuple(task_by_name[t] for t in held)
        cleaned, counts = {}, CleaningCounts()
        for which, ix in parts.items():
            x, y, c = clean(src.x[ix], {t: targets[t][ix] for t in held}, tasks, pre.missing)
            cleaned[which] = (transform(x, pre.transform), y)
            counts += c
        if len(cleaned["train"][0]) == 0:
            raise DataError(
                f"client {cid} has no usable training rows after cleaning ({counts.describe()}); "
                "check the data or the partition, or raise data.small_clients.min_rows"
            )
        raw_clients.append((cid, tasks, cleaned, counts))

    # each client's feature moments, computed once: summed for federated statistics, alone for per-client ones
    moments = [Moments.of(c[2]["train"][0], per_feature) for c in raw_clients] if pre.normalize != "none" else []
    x_stats = sum(moments[1:], moments[0]).mean_std() if moments else None
    y_stats = {}
    for t in src.tasks:
        if t.kind == "regression" and pre.normalize != "none":
            ms = [Moments.of(_labelled(c[2]["train"][1][t.name])[:, None]) for c in raw_clients if t.name in c[2]["train"][1]]
            y_stats[t.name] = sum(ms[1:], ms[0]).mean_std()
    clip = pre.clip_value if pre.transform == "clip" else None

    def finish(x: np.ndarray, y: dict[str, np.ndarray], stats) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
        if stats is not None and len(x):
            x = normalize(x, stats[0], stats[1], clip)
        y = {k: ((v - y_stats[k][0][0]) / y_stats[k][1][0]).astype(np.float32) if k in y_stats else v for k, v in y.items()}
        return x, y

    clients = []
    for i, (cid, tasks, cleaned, counts) in enumerate(raw_clients):
        stats = moments[i].mean_std() if pre.normalize == "client" else x_stats
        tr = finish(*cleaned["train"], stats)
        te = finish(*cleaned["test"], stats)
        clients.append(ClientData(cid, tuple(t.name for t in tasks), _to_split(*tr, tasks), _to_split(*te, tasks), counts.as_dict()))

    hx, hy, held_counts = clean(transform(hx, pre.transform), hy, src.tasks, pre.missing) if len(hx) else (hx, hy, CleaningCounts())
    hx, hy = finish(hx, hy, x_stats)
    holdout = _to_split(hx, hy, src.tasks)
    report = CleaningReport(sum((c[3] for c in raw_clients), CleaningCounts()), held_counts, small)
    log.info("%s", report.describe())
    # each standardised target's scale travels with its task: metrics report RMSE and MAE in original units
    tasks = tuple(
        replace(t, target_offset=float(y_stats[t.name][0][0]), target_scale=float(y_stats[t.name][1][0])) if t.name in y_stats else t
        for t in src.tasks
    )
    return FederatedData(
        tasks=tasks,
        input_shape=tuple(src.x.shape[1:]),
        clients=tuple(clients),
        holdout=holdout,
        description=src.description,
        cleaning=report,
    )


def _min_size(
    cfg: dcfg.DataConfig, src: SourceData, rows: list[np.ndarray], task_sets: list[tuple[str, ...]]
) -> tuple[list[np.ndarray], list[tuple[str, ...]], dict[str, np.ndarray], SmallClients]:
    """Apply ``data.small_clients`` to the partition; returns the clients afterwards, the targets to
    clean them with (a merged client's rows keep only the labels of the tasks their own client held)
    and the report."""
    complete = np.ones(src.x.shape[0], dtype=bool)
    if cfg.preprocessing.missing == "drop":
        complete = np.isfinite(rows_by_features(src.x)).all(axis=1)
    labelled = {t: ~np.isnan(v.astype(np.float64)) for t, v in src.targets.items()}
    sizes = [
        int((complete[idx] & np.logical_or.reduce([labelled[t][idx] for t in held])).sum()) if held and len(idx) else 0
        for idx, held in zip(rows, task_sets)
    ]
    names: list[str | None] | None = None
    if isinstance(cfg.partition, dcfg.NaturalPartition) and src.client_names is not None and src.client_ids is not None:
        names = [src.client_names[int(c)] for c in np.unique(src.client_ids)]
    policy = cfg.small_clients
    order = [t.name for t in src.tasks]
    new_rows, new_sets, small = apply_min_size(rows, task_sets, sizes, policy.min_rows, policy.action, order, names)
    if small.clients:
        log.warning("%s", small.describe())
    targets = src.targets
    if small.merged_into is not None:  # rows of different clients now share one: mask the tasks their client did not hold
        targets = {t: v.astype(np.float32) for t, v in src.targets.items()}
        for idx, held in zip(rows, task_sets):
            for t in order:
                if t not in held:
                    targets[t][idx] = np.nan
    return new_rows, new_sets, targets, small


def _labelled(y: np.ndarray) -> np.ndarray:
    """The rows of ``y`` that carry a label (NaN: missing)."""
    return y[~np.isnan(y.astype(np.float64))]


def _target_tensor(task: Task, y: np.ndarray) -> torch.Tensor:
    """A task's targets as a tensor; a missing label becomes :data:`MISSING_CLASS` (multiclass) or stays NaN."""
    if task.kind == "multiclass":
        y = np.where(np.isnan(y.astype(np.float64)), MISSING_CLASS, y)
    return torch.from_numpy(np.ascontiguousarray(y)).to(task.target_dtype())
