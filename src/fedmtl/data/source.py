"""What every data source returns: raw arrays, their tasks, and optionally clients and a held-out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmtl.tasks import Task


class DataError(ValueError):
    """Data that cannot be used; the message names the file, column or value at fault."""


@dataclass(frozen=True)
class SourceData:
    """Raw rows from a source, before partitioning and preprocessing.

    Attributes:
        x: features, ``[N, ...]`` float32; may hold NaN/Inf (cleaned client-side).
        targets: task name -> ``[N]`` targets (NaN marks a missing label).
        tasks: the tasks, in order.
        client_ids: ``[N]`` natural client of each row, or None.
        holdout_x / holdout_targets: the source's own test split, when it has one.
        client_names: the natural clients' own ids (``client_ids`` indexes them), for reports.
    """

    x: np.ndarray
    targets: dict[str, np.ndarray]
    tasks: tuple[Task, ...]
    client_ids: np.ndarray | None = None
    holdout_x: np.ndarray | None = None
    holdout_targets: dict[str, np.ndarray] | None = None
    description: str = ""
    client_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for name, t in self.targets.items():
            if t.shape[0] != n:
                raise DataError(f"target {name!r} has {t.shape[0]} rows, features have {n}")
        if self.client_ids is not None and self.client_ids.shape[0] != n:
            raise DataError(f"client ids have {self.client_ids.shape[0]} rows, features have {n}")
        missing = [t.name for t in self.tasks if t.name not in self.targets]
        if missing:
            raise DataError(f"no targets for tasks {missing}")


def digit_tasks(digits: np.ndarray, names: list[str]) -> tuple[dict[str, np.ndarray], tuple[Task, ...]]:
    """Tasks derived from a digit label.

    ``digit``: the digit (10 classes); ``parity``: odd (1) or even (0); ``large``: digit >= 5;
    ``mod3``: digit mod 3 (3 classes). Related but not identical, so sharing helps and conflicts are real.
    """
    d = digits.astype(np.int64)
    table: dict[str, tuple[np.ndarray, Task]] = {
        "digit": (d, Task("digit", "multiclass", 10)),
        "parity": ((d % 2).astype(np.float32), Task("parity", "binary")),
        "large": ((d >= 5).astype(np.float32), Task("large", "binary")),
        "mod3": (d % 3, Task("mod3", "multiclass", 3)),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"unknown derived task(s) {unknown}; allowed: {sorted(table)}")
    if len(set(names)) != len(names):
        raise DataError(f"tasks listed twice: {names}")
    return {n: table[n][0] for n in names}, tuple(table[n][1] for n in names)
