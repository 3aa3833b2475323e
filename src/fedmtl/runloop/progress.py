"""How a run shows its rounds as they finish: a progress bar (the simulation) or a log line per round (Flower)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger("fedmtl")


class Progress(Protocol):
    """Told when the rounds start, after each round (its record) and when the loop ends."""

    def start(self, done: int, total: int) -> None: ...

    def update(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def postfix(record: Mapping[str, Any]) -> str:
    """The latest scores in a few characters: per task the global accuracy (R² for regression), else the
    personalised models' pooled one (``(pers)``: no global model), and epsilon under DP."""
    parts = []
    for task, m in (record.get("global") or {}).items():
        key = "accuracy" if "accuracy" in m else "r2"
        parts.append(f"{task}={m[key]:.3f}" if m.get(key) is not None else f"{task}=n/a")  # None: not finite
    if not record.get("global"):  # no global model (local): the personalised models' pooled scores
        for task, p in (record.get("personalized") or {}).items():
            m = p.get("pooled") or {}
            key = "accuracy" if "accuracy" in m else "r2"
            parts.append(f"{task}={m[key]:.3f} (pers)" if m.get(key) is not None else f"{task}=n/a (pers)")
    if "epsilon" in (record.get("privacy") or {}):
        parts.append(f"ε={record['privacy']['epsilon']:.2f}")
    return " ".join(parts)


class Bar:
    """A tqdm bar over the rounds, its postfix the last evaluated scores and the round's uplink megabytes."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._shown = ""

    def start(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=done, desc="rounds", unit="round", dynamic_ncols=True)

    def update(self, record: Mapping[str, Any]) -> None:
        if record.get("global") is not None:
            self._shown = postfix(record)
        self._bar.update(1)
        self._bar.set_postfix_str(f"{self._shown} up={record['bytes_up'] / 1e6:.1f}MB/round")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LogLines:
    """One ``INFO`` line per round: how many clients replied, who was dropped, the global scores when evaluated."""

    def __init__(self) -> None:
        self._total = 0

    def start(self, done: int, total: int) -> None:
        self._total = total

    def update(self, record: Mapping[str, Any]) -> None:
        log.info(
            "round %d/%d: %d replies, dropped %s, %s",
            record["round"],
            self._total,
            record.get("replies", record.get("cohort_size", 0)),
            record.get("dropped", {}),
            record.get("global", ""),
        )

    def close(self) -> None:
        pass


__all__ = ["Bar", "LogLines", "Progress", "postfix"]
