"""A user's own data: NumPy arrays, a CSV/Parquet table, or an ``.npz`` archive.

Feature columns, one column per task, and an optional client-id column that defines a natural
partition. Labels of classification tasks may be strings or numbers; they are coded in sorted order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedmtl._extras import install_hint, require
from fedmtl.config.data import TableSource, TaskSpec
from fedmtl.data.source import DataError, SourceData
from fedmtl.tasks import Task, TaskKind

#: most distinct values a multiclass target may have without ``num_classes``: more looks like a number
MAX_INFERRED_CLASSES = 100
KINDS = ("multiclass", "binary", "regression")


def encode_target(name: str, kind: TaskKind, values: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, Task]:
    """Targets as numbers (NaN = missing) and the task they define.

    Multiclass labels are coded 0..K-1 in sorted order of the distinct values; binary labels must
    take exactly two distinct values (coded 0/1 in sorted order); regression targets must be numeric.
    A multiclass column with more distinct values than ``num_classes``, or than
    :data:`MAX_INFERRED_CLASSES` when ``num_classes`` is not given, is refused: it is most likely a
    continuous target (one output per distinct value would train thousands of near-empty classes).
    """
    if kind not in KINDS:
        raise DataError(f"task {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    values = np.asarray(values)
    if kind == "regression":
        try:
            return values.astype(np.float32), Task(name, "regression")
        except (TypeError, ValueError):
            raise DataError(f"task {name!r} is a regression task but its column holds non-numeric values") from None
    missing = _is_missing(values)
    present = values[~missing]
    classes = np.unique(present.astype(str) if present.dtype == object else present)
    if kind == "binary" and len(classes) != 2:
        raise DataError(f"task {name!r} is binary but has {len(classes)} distinct labels: {classes[:10].tolist()}")
    if kind == "multiclass":
        k = num_classes if num_classes is not None else len(classes)
        if k < 2:
            raise DataError(f"task {name!r} is multiclass but has {len(classes)} distinct label(s)")
        if num_classes is not None and len(classes) > num_classes:
            raise DataError(
                f"task {name!r} declares num_classes={num_classes} but has {len(classes)} distinct labels "
                f"(e.g. {classes[:5].tolist()}){_continuous_hint(present)}"
            )
        if num_classes is None and len(classes) > MAX_INFERRED_CLASSES:
            raise DataError(
                f"task {name!r} is multiclass but has {len(classes)} distinct labels (more than {MAX_INFERRED_CLASSES}; "
                f"e.g. {classes[:5].tolist()}){_continuous_hint(present)}; if it really has that many classes, set its num_classes"
            )
        if num_classes is not None and np.issubdtype(present.dtype, np.integer) and len(present):
            if present.min() < 0 or present.max() >= num_classes:
                raise DataError(f"task {name!r}: labels must lie in 0..{num_classes - 1}, found {present.min()}..{present.max()}")
            coded = np.full(values.shape, np.nan, dtype=np.float32)
            coded[~missing] = present
            return coded, Task(name, "multiclass", num_classes)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    coded = np.full(values.shape, np.nan, dtype=np.float32)
    keys = present.astype(str) if present.dtype == object else present
    coded[~missing] = [lookup[v] for v in keys.tolist()]
    task = Task(name, "binary") if kind == "binary" else Task(name, "multiclass", max(num_classes or 0, len(classes)))
    return coded, task


def _continuous_hint(present: np.ndarray) -> str:
    """Advice for a multiclass column with too many values: numeric ones look like a regression target."""
    if present.dtype.kind in "iuf" or (present.dtype == object and all(isinstance(v, (int, float, np.number)) for v in present[:1000])):
        fractional = present.dtype.kind == "f" and bool(np.any(np.mod(present.astype(np.float64), 1) != 0))
        return f": it looks continuous{' (fractional values)' if fractional else ''}, use kind regression"
    return ""


def _is_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "fc":
        return ~np.isfinite(values)
    if values.dtype == object:
        return np.array([v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values], dtype=bool)
    return np.zeros(values.shape, dtype=bool)


def from_arrays(
    x: np.ndarray,
    targets: Mapping[str, np.ndarray],
    kinds: Mapping[str, TaskKind],
    client_ids: np.ndarray | Sequence[object] | None = None,
    num_classes: Mapping[str, int] | None = None,
    description: str = "user arrays",
) -> SourceData:
    """A source from in-memory arrays: the Python path for a user's own data.

    Args:
        x: features ``[N, ...]`` (numeric; NaN marks a missing value, cleaned client-side).
        targets: task name -> ``[N]`` targets.
        kinds: task name -> ``"multiclass" | "binary" | "regression"``.
        client_ids: optional ``[N]`` client of each row (any hashable labels), for a natural partition.
        num_classes: optional class counts for multiclass tasks.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"features must be [rows, features...], got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"features must be numeric, got dtype {x.dtype}")
    unknown = sorted(set(targets) ^ set(kinds))
    if unknown:
        raise DataError(f"targets and kinds must name the same tasks; mismatched: {unknown}")
    bad = {name: kind for name, kind in kinds.items() if kind not in KINDS}
    if bad:
        raise DataError(f"unknown task kind(s) {bad}; allowed: {', '.join(KINDS)}")
    coded: dict[str, np.ndarray] = {}
    tasks: list[Task] = []
    for name in targets:
        values, task = encode_target(name, kinds[name], np.asarray(targets[name]), (num_classes or {}).get(name))
        if values.shape[0] != x.shape[0]:
            raise DataError(f"target {name!r} has {values.shape[0]} rows, features have {x.shape[0]}")
        coded[name] = values
        tasks.append(task)
    ids, names = None, None
    if client_ids is not None:
        raw = np.asarray(client_ids)
        if raw.shape[0] != x.shape[0]:
            raise DataError(f"client ids have {raw.shape[0]} rows, features have {x.shape[0]}")
        unique, ids = np.unique(raw.astype(str), return_inverse=True)
        names = tuple(unique.tolist())
    return SourceData(
        x=x.astype(np.float32),
        targets=coded,
        tasks=tuple(tasks),
        client_ids=ids,
        description=description,
        client_names=names,
    )


def _read_frame(path: Path):  # type: ignore[no-untyped-def]
    pd = require("pandas", "tables", "reading a CSV or Parquet table")

    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError:
            raise DataError(f"reading Parquet needs pyarrow: {install_hint('tables')}") from None
    raise DataError(f"unsupported table format {suffix!r} for {str(path)!r}; allowed: .csv, .parquet, .npz")


def load_table(cfg: TableSource, seed: int) -> SourceData:
    """Read ``cfg.path`` and build a source from the configured columns."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data file {cfg.path!r} does not exist")
    kinds = {t.name: t.kind for t in cfg.tasks}
    classes = {t.name: t.num_classes for t in cfg.tasks if t.num_classes is not None}
    if path.suffix.lower() == ".npz":
        return _load_npz(path, cfg.tasks, cfg.client_column, kinds, classes)
    frame = _read_frame(path)
    columns = {t.name: (t.column or t.name) for t in cfg.tasks}
    needed = list(columns.values()) + ([cfg.client_column] if cfg.client_column else []) + list(cfg.features or [])
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise DataError(f"{str(path)!r} has no column(s) {absent}; its columns are {list(frame.columns)}")
    used = set(columns.values()) | ({cfg.client_column} if cfg.client_column else set())
    features = list(cfg.features) if cfg.features is not None else [c for c in frame.columns if c not in used]
    if not features:
        raise DataError(f"{str(path)!r} has no feature columns left after the task and client columns")
    feats = frame[features]
    categorical = [c for c in features if feats[c].dtype == object or str(feats[c].dtype) in ("category", "string", "str", "bool")]
    numeric = feats[[c for c in features if c not in categorical]]
    try:
        x = numeric.to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise DataError(f"feature columns of {str(path)!r} must be numeric or categorical: {exc}") from None
    x = np.concatenate([x, *(one_hot(feats[c]) for c in categorical)], axis=1)
    targets = {name: frame[col].to_numpy() for name, col in columns.items()}
    ids = frame[cfg.client_column].to_numpy() if cfg.client_column else None
    return from_arrays(x, targets, kinds, ids, classes, description=f"table {path.name}, {len(frame)} rows")


def one_hot(column) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A categorical column as one-hot columns (categories in sorted order); a missing value (NaN, None,
    an empty CSV cell) is missing in every one of them, so that ``data.preprocessing.missing`` drops or
    imputes it like a missing number (``impute_mean`` gives the client's category frequencies)."""
    pd = require("pandas", "tables", "reading a CSV or Parquet table")
    codes = np.array(pd.get_dummies(column, dummy_na=False).to_numpy(dtype=np.float32))
    codes[column.isna().to_numpy()] = np.nan
    return codes


def _load_npz(path: Path, specs: Sequence[TaskSpec], client_key: str | None, kinds, classes) -> SourceData:  # type: ignore[no-untyped-def]
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {str(path)!r} as a NumPy archive: {exc}") from None
    keys = set(archive.files)
    needed = ["x"] + [s.column or s.name for s in specs] + ([client_key] if client_key else [])
    absent = [k for k in needed if k not in keys]
    if absent:
        raise DataError(f"{str(path)!r} has no array(s) {absent}; it holds {sorted(keys)}")
    targets = {s.name: archive[s.column or s.name] for s in specs}
    ids = archive[client_key] if client_key else None
    return from_arrays(archive["x"], targets, kinds, ids, classes, description=f"arrays {path.name}")
