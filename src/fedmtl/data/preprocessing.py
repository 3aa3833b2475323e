"""Client-side preprocessing: cleaning, transformation, normalisation.

Normalisation statistics are either each client's own or computed federatedly: clients send only
:class:`Moments` (counts, sums and sums of squares), which add up exactly to the federation's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmtl.data.cleaning import CleaningCounts
from fedmtl.data.source import DataError
from fedmtl.tasks import Task


def rows_by_features(x: np.ndarray) -> np.ndarray:
    """``[N, ...]`` as ``[N, features]``; also for N = 0, where ``reshape(0, -1)`` is ambiguous."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


@dataclass(frozen=True)
class Moments:
    """Per-feature count, sum and sum of squares: all a client reveals for federated normalisation."""

    n: float
    total: np.ndarray
    total_sq: np.ndarray

    @staticmethod
    def of(x: np.ndarray, per_feature: bool = True) -> Moments:
        flat = rows_by_features(x).astype(np.float64) if per_feature else x.reshape(-1, 1).astype(np.float64)
        return Moments(float(flat.shape[0]), flat.sum(0), (flat * flat).sum(0))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    def mean_std(self, floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        if self.n <= 0:
            raise DataError("cannot normalise with statistics of zero rows")
        mean = self.total / self.n
        var = np.maximum(self.total_sq / self.n - mean * mean, 0.0)
        std = np.sqrt(var)
        # a (near-)constant feature carries no information: scale 1 keeps rare unseen values finite
        std = np.where(std < 1e-3 * max(float(std.max(initial=0.0)), floor), 1.0, np.maximum(std, floor))
        return mean.astype(np.float32), std.astype(np.float32)


def clean(
    x: np.ndarray, targets: Mapping[str, np.ndarray], tasks: Sequence[Task], missing: str
) -> tuple[np.ndarray, dict[str, np.ndarray], CleaningCounts]:
    """Drop rows with an invalid label or with no label at all; drop or impute rows with non-finite features.

    A label that is missing (NaN) for some of a row's tasks is kept as missing (partial labels: that row
    enters only the other tasks' losses and metrics); a row missing every label is dropped. A row with
    an invalid label counts as ``dropped_invalid_label`` even when other labels are missing.

    Returns the cleaned features, targets and what was dropped and imputed, per reason.
    """
    n = x.shape[0]
    valid = np.ones(n, dtype=bool)
    any_label = np.zeros(n, dtype=bool)
    for task in tasks:
        y = targets[task.name]
        present = ~np.isnan(y.astype(np.float64))
        ok = np.isfinite(y) | ~present
        if task.kind == "multiclass":
            ok &= ~present | ((y >= 0) & (y < task.num_classes) & (np.mod(np.nan_to_num(y), 1) == 0))
        elif task.kind == "binary":
            ok &= ~present | np.isin(y, (0, 1))
        valid &= ok
        any_label |= present
    no_label = valid & ~any_label & (len(tasks) > 0)
    keep = valid & ~no_label
    x, targets = x[keep], {k: v[keep] for k, v in targets.items()}
    flat = rows_by_features(x)
    bad = ~np.isfinite(flat)
    dropped_feature = imputed_rows = imputed_values = 0
    if missing not in ("drop", "impute_mean", "impute_zero"):
        raise DataError(f"missing={missing!r} not in drop, impute_mean, impute_zero")
    if bad.any():
        rows = bad.any(axis=1)
        if missing == "drop":
            dropped_feature = int(rows.sum())
            x, targets = x[~rows], {k: v[~rows] for k, v in targets.items()}
        else:
            imputed_rows, imputed_values = int(rows.sum()), int(bad.sum())
            if missing == "impute_mean":
                masked = np.where(bad, 0.0, flat)
                seen = (~bad).sum(0)
                fill = np.divide(masked.sum(0), seen, out=np.zeros(flat.shape[1]), where=seen > 0)
            else:
                fill = np.zeros(flat.shape[1])
            flat = np.where(bad, fill[None, :], flat)
            x = flat.reshape(x.shape).astype(np.float32)
    counts = CleaningCounts(
        rows=n,
        dropped_no_label=int(no_label.sum()),
        dropped_invalid_label=int((~valid).sum()),
        dropped_feature=dropped_feature,
        imputed_rows=imputed_rows,
        imputed_values=imputed_values,
    )
    return x, targets, counts


def transform(x: np.ndarray, kind: str) -> np.ndarray:
    """``log1p``: sign(x) log(1 + |x|), for heavy-tailed counts; ``none`` and ``clip`` leave x (clip acts after normalising)."""
    if kind == "log1p":
        return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
    return x


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float | None = None) -> np.ndarray:
    """Standardise with given statistics (per feature, or one scalar for images), optionally clipping."""
    flat = rows_by_features(x)
    out = (flat - mean[None, :]) / std[None, :]
    if clip is not None:
        out = np.clip(out, -clip, clip)
    return out.reshape(x.shape).astype(np.float32)
