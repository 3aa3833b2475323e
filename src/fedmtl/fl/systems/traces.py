"""CSV traces of client systems: speeds and bandwidths, and availability intervals.

Every value is checked before it is used: a missing or extra column, a client id out of range or
repeated, a number that is not a positive finite one, an interval that ends before it starts, each is
a :class:`~fedmtl.config.ConfigError` naming the file, the line and what is allowed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from fedmtl.config.loading import ConfigError

#: a trace larger than this is refused before it is read (a million clients' rows fit in far less)
MAX_TRACE_BYTES = 256 * 2**20


def read_rows(path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The data rows of a CSV whose header is exactly ``columns``, each with its line number."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace file {str(p)!r} does not exist (or is not a file)")
    size = p.stat().st_size
    if size > MAX_TRACE_BYTES:
        raise ConfigError(f"trace file {str(p)!r} holds {size:,} bytes; at most {MAX_TRACE_BYTES:,} are allowed")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace file {str(p)!r} is not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    if header != columns:
        raise ConfigError(f"trace file {str(p)!r} has header {list(header)}; expected exactly {list(columns)}")
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise ConfigError(f"trace file {str(p)!r}, line {reader.line_num}: expected {len(columns)} values ({', '.join(columns)})")
        rows.append((reader.line_num, {k.strip(): v.strip() for k, v in row.items()}))
    return rows


def parse_client(value: str, num_clients: int, where: str) -> int:
    """A client id in ``0..num_clients-1``."""
    try:
        cid = int(value)
    except ValueError:
        raise ConfigError(f"{where}: client {value!r} is not an integer id") from None
    if not 0 <= cid < num_clients:
        raise ConfigError(f"{where}: client {cid} is out of range; allowed: 0..{num_clients - 1}")
    return cid


def parse_number(value: str, what: str, where: str, positive: bool = True) -> float:
    """A finite float, positive (or, with ``positive=False``, non-negative)."""
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x) or (x <= 0 if positive else x < 0):
        raise ConfigError(f"{where}: {what} {value!r} must be a finite number {'> 0' if positive else '>= 0'}")
    return x


def read_speed_trace(path: str | Path, num_clients: int) -> tuple[list[float], list[float]]:
    """Per client (by id) its speed (samples/s) and bandwidth (bytes/s); every client must appear once."""
    speed: dict[int, float] = {}
    bandwidth: dict[int, float] = {}
    for line, row in read_rows(path, ("client", "speed", "bandwidth")):
        where = f"trace file {str(path)!r}, line {line}"
        cid = parse_client(row["client"], num_clients, where)
        if cid in speed:
            raise ConfigError(f"{where}: client {cid} appears twice")
        speed[cid] = parse_number(row["speed"], "speed", where)
        bandwidth[cid] = parse_number(row["bandwidth"], "bandwidth", where)
    missing = [c for c in range(num_clients) if c not in speed]
    if missing:
        raise ConfigError(f"trace file {str(path)!r} lacks clients {missing[:10]}{' ...' if len(missing) > 10 else ''}; every client 0..{num_clients - 1} needs a row")
    return [speed[c] for c in range(num_clients)], [bandwidth[c] for c in range(num_clients)]


def read_availability_trace(path: str | Path, num_clients: int) -> list[list[tuple[float, float]]]:
    """Per client its online intervals ``[start, end)``, sorted and merged where they touch or overlap."""
    spans: list[list[tuple[float, float]]] = [[] for _ in range(num_clients)]
    for line, row in read_rows(path, ("client", "start", "end")):
        where = f"trace file {str(path)!r}, line {line}"
        cid = parse_client(row["client"], num_clients, where)
        start = parse_number(row["start"], "start", where, positive=False)
        end = parse_number(row["end"], "end", where)
        if end <= start:
            raise ConfigError(f"{where}: interval end {end} must come after start {start}")
        spans[cid].append((start, end))
    return [merge(s) for s in spans]


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted intervals with overlapping or touching ones joined."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
