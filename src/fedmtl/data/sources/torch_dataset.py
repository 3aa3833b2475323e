"""Your own ``torch.utils.data.Dataset`` s as a federated source.

Each item is ``(x, {task: y})``. A task absent from an item's dict (or given as ``None`` / NaN) is a missing
label: that row enters only the other tasks' losses and metrics. Clients come from a dict of datasets
(``{client_id: Dataset}``) or from one dataset plus a client id per row; either way they become a natural
partition (``data.partition: {name: natural}``). The rows are read once, into memory, where every engine
(the vectorised one included) trains on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedmtl.data.source import DataError, SourceData
from fedmtl.data.sources.table import from_arrays
from fedmtl.tasks import TaskKind


def _rows(dataset: Any, kinds: Mapping[str, TaskKind], where: str) -> tuple[list[np.ndarray], dict[str, list[object]]]:
    """Read every item of ``dataset``: features and, per task, its label (``None`` when missing)."""
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"{where}: a dataset must have a length (a map-style torch Dataset), got {type(dataset).__name__}") from None
    xs: list[np.ndarray] = []
    ys: dict[str, list[object]] = {t: [] for t in kinds}
    for i in range(n):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping)):
            raise DataError(f"{where}, item {i}: expected (x, {{task: y}}), got {type(item).__name__}")
        x, y = item
        unknown = [t for t in y if t not in kinds]
        if unknown:
            raise DataError(f"{where}, item {i}: unknown task(s) {unknown}; the tasks are {list(kinds)}")
        xs.append(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32))
        if xs[-1].shape != xs[0].shape:
            raise DataError(f"{where}, item {i}: features of shape {list(xs[-1].shape)}, earlier items {list(xs[0].shape)}")
        for t in kinds:
            v = y.get(t)
            ys[t].append(v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
    return xs, ys


def from_datasets(
    datasets: Mapping[Any, Any] | Any,
    kinds: Mapping[str, TaskKind],
    *,
    client_ids: Sequence[object] | np.ndarray | None = None,
    holdout: Any | None = None,
    num_classes: Mapping[str, int] | None = None,
    description: str = "user torch datasets",
) -> SourceData:
    """A source from ``torch.utils.data.Dataset`` s whose items are ``(x, {task: y})``.

    Args:
        datasets: ``{client_id: Dataset}`` (one per client), or one Dataset.
        kinds: task name -> ``"multiclass" | "binary" | "regression"``.
        client_ids: with one Dataset, the client of each row (omit it to partition by the config instead).
        holdout: an optional held-out Dataset for the server's evaluation (else ``data.holdout_fraction``).
        num_classes: optional class counts for multiclass tasks.
    """
    if not kinds:
        raise DataError("from_datasets needs at least one task in kinds")
    if isinstance(datasets, Mapping):
        if client_ids is not None:
            raise DataError("client_ids is for one Dataset; a dict of datasets already names each client")
        if not datasets:
            raise DataError("from_datasets got an empty dict of datasets")
        xs, ids_list = [], []
        ys: dict[str, list[object]] = {t: [] for t in kinds}
        for cid, ds in datasets.items():
            x, y = _rows(ds, kinds, f"client {cid!r}")
            xs += x
            ids_list += [str(cid)] * len(x)
            for t in kinds:
                ys[t] += y[t]
        client_ids = np.asarray(ids_list)
    else:
        xs, ys = _rows(datasets, kinds, "dataset")
    if not xs:
        raise DataError("the datasets hold no items")
    n_train = len(xs)
    if holdout is not None:
        hx, hy = _rows(holdout, kinds, "holdout")
        if hx and hx[0].shape != xs[0].shape:
            raise DataError(f"holdout features have shape {list(hx[0].shape)}, training features {list(xs[0].shape)}")
        xs += hx
        for t in kinds:
            ys[t] += hy[t]
    # the holdout is coded together with the training rows, so that class codes agree
    targets = {t: np.asarray([np.nan if v is None else v for v in ys[t]], dtype=object) for t in kinds}
    targets = {t: (v.astype(np.float64) if all(isinstance(e, (int, float, np.number)) for e in v) else v) for t, v in targets.items()}
    ids_all = None if client_ids is None else np.concatenate([np.asarray(client_ids).astype(str), np.full(len(xs) - n_train, "", dtype=object)])
    src = from_arrays(np.stack(xs), targets, kinds, ids_all, num_classes, description)
    if holdout is None:
        return src
    train_ids = None if src.client_ids is None else src.client_ids[:n_train]
    return SourceData(
        x=src.x[:n_train],
        targets={t: v[:n_train] for t, v in src.targets.items()},
        tasks=src.tasks,
        client_ids=train_ids,
        holdout_x=src.x[n_train:],
        holdout_targets={t: v[n_train:] for t, v in src.targets.items()},
        description=description,
        client_names=src.client_names,
    )
