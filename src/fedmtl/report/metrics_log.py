"""``metrics.jsonl``: one JSON line per round, appended as the run goes.

A record is a JSON object whose ``round`` is an integer >= 0. Reading a file that a crash, a full disk
or a hand edit damaged never loses a record silently:

* a trailing partial line (no final newline, not a whole record: a crash mid-write) is dropped;
* any other line that is not a record (bad JSON, ``[1,2,3]``, ``{"round": "abc"}``, not UTF-8) is
  reported by line number; :func:`read_metrics` skips it with a warning and leaves the file alone,
  and :meth:`MetricsLog.truncate_after` (the one place the file is rewritten, when a run starts or
  resumes) first sets the whole file aside, byte for byte, as ``metrics.jsonl.damaged-N``, then keeps
  the good records and goes on.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmtl.atomic import atomic_write_text, remove_stale_temps

log = logging.getLogger("fedmtl")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class ParsedMetrics:
    """What a metrics file holds.

    Attributes:
        records: the good records, in file order.
        damaged: ``(line number, reason)`` of every other line that is not a record (1-based).
        torn: whether a trailing partial line (a crash mid-write) was dropped.
    """

    records: list[dict[str, Any]]
    damaged: list[tuple[int, str]]
    torn: bool


def parse_record(line: bytes) -> dict[str, Any]:
    """One line as a record; ``ValueError`` saying why it is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    round_ = record.get("round")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise ValueError(f"'round' is {str(round_)[:40]!r}, not an integer >= 0")
    return record


def parse_metrics(raw: bytes) -> ParsedMetrics:
    """Split a metrics file's bytes into its good records, its damaged lines and a torn last line."""
    lines = raw.split(b"\n")
    last = len(lines) - 1  # the text after the final newline: empty unless the last write was cut short
    records: list[dict[str, Any]] = []
    damaged: list[tuple[int, str]] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(parse_record(line))
        except ValueError as exc:
            if i == last:
                torn = True
            else:
                damaged.append((i + 1, str(exc)))
    return ParsedMetrics(records, damaged, torn)


def _describe(damaged: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"line {n}: {why}" for n, why in damaged[:5])
    return shown + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line is dropped, damaged lines are skipped with a warning
    naming them (the file is not changed)."""
    if not path.exists():
        return []
    parsed = parse_metrics(path.read_bytes())
    if parsed.damaged:
        log.warning("%s: skipped %d damaged line(s): %s", path, len(parsed.damaged), _describe(parsed.damaged))
    return parsed.records


def set_aside(path: Path) -> Path:
    """Copy ``path`` byte for byte to the first free ``<name>.damaged-N`` beside it; return the copy."""
    n = 1
    while (backup := path.with_name(f"{path.name}.damaged-{n}")).exists():
        n += 1
    shutil.copyfile(path, backup)
    return backup


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
        """Keep only rounds <= ``last_round`` (used when a run starts or resumes: later lines belong to lost work).

        Removes the temporary files of interrupted writes beside the log; a torn last line is dropped;
        a file with damaged lines is first set aside whole (:func:`set_aside`) with a warning naming them.
        """
        remove_stale_temps(self.path.parent)
        if not self.path.exists():
            atomic_write_text(self.path, "")
            return
        parsed = parse_metrics(self.path.read_bytes())
        if parsed.torn:
            log.info("%s: dropped a partial last line (a write cut short)", self.path)
        if parsed.damaged:
            backup = set_aside(self.path)
            log.warning(
                "%s: %d damaged line(s) left out, the original file kept as %s: %s",
                self.path, len(parsed.damaged), backup, _describe(parsed.damaged),
            )
        kept = [r for r in parsed.records if r["round"] <= last_round]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


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
