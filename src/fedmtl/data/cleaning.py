"""What cleaning did to a user's rows, counted per reason, so that nothing is dropped silently.

Each client counts its own rows (a real client would report only these integers); the federation's
report sums them, adds the server's hold-out, and records which clients the minimum-size rule
(``data.small_clients``) dropped or merged. The run writes it to the log and to ``summary.json``
(``data_cleaning``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class CleaningCounts:
    """Rows one cleaning pass saw, dropped (per reason) and imputed; counts add with ``+``.

    Attributes:
        rows: rows given to cleaning.
        dropped_no_label: rows with no label for any task the client holds.
        dropped_invalid_label: rows with a label outside its task's range (a class index out of range
            or not whole, a binary label other than 0 / 1, an infinite regression target).
        dropped_feature: rows with a missing (NaN, ±inf; a NaN categorical) feature, with ``missing: drop``.
        imputed_rows: rows with a missing feature that was imputed (``impute_mean`` / ``impute_zero``).
        imputed_values: feature values imputed (a categorical column counts once per one-hot column).
    """

    rows: int = 0
    dropped_no_label: int = 0
    dropped_invalid_label: int = 0
    dropped_feature: int = 0
    imputed_rows: int = 0
    imputed_values: int = 0

    def __add__(self, other: CleaningCounts) -> CleaningCounts:
        return CleaningCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def dropped(self) -> int:
        return self.dropped_no_label + self.dropped_invalid_label + self.dropped_feature

    @property
    def kept(self) -> int:
        return self.rows - self.dropped

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log, e.g. ``'1,000 rows: 12 dropped (3 no label, 9 missing feature), 4 imputed'``."""
        reasons = [
            f"{n:,} {why}"
            for n, why in (
                (self.dropped_no_label, "no label"),
                (self.dropped_invalid_label, "invalid label"),
                (self.dropped_feature, "missing feature"),
            )
            if n
        ]
        text = f"{self.rows:,} rows: {self.dropped:,} dropped" + (f" ({', '.join(reasons)})" if reasons else "")
        if self.imputed_rows:
            text += f", {self.imputed_rows:,} imputed ({self.imputed_values:,} values)"
        return text


@dataclass(frozen=True)
class SmallClient:
    """A client of the partition with fewer usable rows than ``data.small_clients.min_rows``."""

    index: int
    """its index in the partition (before any client was dropped or merged)"""
    name: str | None
    """its natural id (a ``client_column`` value), when it has one"""
    rows: int
    """its usable rows: labelled for a task it holds, and (with ``missing: drop``) without missing features"""


@dataclass(frozen=True)
class SmallClients:
    """What the minimum client size did: which clients fell below it and what happened to them."""

    min_rows: int
    action: str
    clients: tuple[SmallClient, ...] = ()
    merged_into: int | None = None
    """with ``action: merge``, the index (among the final clients) of the client that received their rows"""

    def describe(self) -> str:
        if not self.clients:
            return f"every client has at least {self.min_rows} usable rows"
        shown = ", ".join(f"{c.index}" + (f" ({c.name})" if c.name is not None else "") + f": {c.rows}" for c in self.clients[:10])
        more = f" and {len(self.clients) - 10} more" if len(self.clients) > 10 else ""
        verb = {"drop": "dropped", "merge": f"merged into client {self.merged_into}", "keep": "kept"}[self.action]
        return (
            f"{len(self.clients)} client(s) below data.small_clients.min_rows={self.min_rows} usable rows, {verb} "
            f"(client: rows; {shown}{more})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_rows": self.min_rows,
            "action": self.action,
            "clients": [asdict(c) for c in self.clients],
            "rows": sum(c.rows for c in self.clients),
            "merged_into": self.merged_into,
        }


@dataclass(frozen=True)
class CleaningReport:
    """The federation's cleaning: the clients' counts summed, the hold-out's, and the client-size rule."""

    clients: CleaningCounts
    holdout: CleaningCounts
    small_clients: SmallClients

    def as_dict(self) -> dict[str, Any]:
        return {"clients": self.clients.as_dict(), "holdout": self.holdout.as_dict(), "small_clients": self.small_clients.as_dict()}

    def describe(self) -> str:
        return f"data cleaning: clients {self.clients.describe()}; hold-out {self.holdout.describe()}; {self.small_clients.describe()}"
