"""``metrics.jsonl``: one JSON line per round, appended as the run goes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmtl.atomic import atomic_write_text


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Append-only log of per-round records."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, last_round: int) -> None:
        """Keep only rounds <= ``last_round`` (used on resume: later lines belong to lost work)."""
        kept = [r for r in self.read() if int(r.get("round", 0)) <= last_round]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def flatten(record: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """A nested record as one level: ``{"global": {"digit": {"accuracy": 0.5}}}`` -> ``{"global.digit.accuracy": 0.5}``.

    What ``Results.to_pandas()`` makes columns of, and tracking backends metric names of (``sep="/"``).
    """
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update({f"{key}{sep}{k}": v for k, v in flatten(value, sep).items()})
        else:
            out[str(key)] = value
    return out
