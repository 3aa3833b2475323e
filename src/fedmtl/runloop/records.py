"""A round's line in ``metrics.jsonl``, from what :meth:`Federation.round <fedmtl.fl.federation.Federation.round>`
reports: the same fields whichever transport ran it (a transport adds its own: Flower's wire bytes, attempts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmtl.fl.federation import RoundReport, ServerState


def round_record(state: ServerState, report: RoundReport, engine: str, last_run: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A round's ``metrics.jsonl`` record (before evaluation), from the state it reached and its report.

    Args:
        engine: what ran the round (the engine's label, ``flower``).
        last_run: engine name -> clients each engine trained this round, when some fell back.
    """
    record: dict[str, Any] = {
        "round": state.round,
        "cohort_size": len(report.cohort),
        "dropped": report.dropped,
        "bytes_down": report.bytes_down,
        "bytes_up": report.bytes_up,
        "train_loss": report.train_loss,
        "round_seconds": report.seconds,
        "engine": engine,
        **report.systems,  # virtual_time (simulated seconds) beside round_seconds; FedBuff's staleness
    }
    if last_run:
        record["engine_clients"] = dict(last_run)
    if report.algorithm_bytes_down or report.algorithm_bytes_up:
        # included in bytes_down / bytes_up: the algorithm's server state and the clients' outboxes
        record["algorithm_bytes_down"] = report.algorithm_bytes_down
        record["algorithm_bytes_up"] = report.algorithm_bytes_up
    if report.privacy:
        record["privacy"] = report.privacy
    if report.skipped:
        record["skipped"] = report.skipped
    return record


__all__ = ["round_record"]
