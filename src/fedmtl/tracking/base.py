"""The callback protocol: what the run loop calls, and what each tracking backend implements.

Like pfl-research's callbacks (``pfl/callback/base.py``): a plain class with no-op hooks; override
the ones you need. The run loop calls :meth:`Callback.on_round` once per finished round, with the
same record it appends to ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmtl.report.metrics_log import flatten


@dataclass(frozen=True)
class RunInfo:
    """What a callback knows of the run.

    Attributes:
        run_dir: the run folder.
        config: the resolved configuration (``fedmtl config`` output, as plain data).
        rounds: the rounds the run is configured for (``server.rounds``).
    """

    run_dir: Path
    config: Mapping[str, Any]
    rounds: int

    @property
    def name(self) -> str:
        return self.run_dir.name


class Callback:
    """Called by the run loop; subclass it and override what you need.

    Example::

        class PrintAccuracy(fedmtl.tracking.Callback):
            def on_round(self, run, record):
                if "global" in record:
                    print(record["round"], record["global"]["digit"]["accuracy"])

        fedmtl.Experiment(config).add_callback(PrintAccuracy()).run()
    """

    def on_start(self, run: RunInfo) -> None:
        """Before the first round this process runs (also after a resume)."""

    def on_round(self, run: RunInfo, record: Mapping[str, Any]) -> None:
        """After each round, with its ``metrics.jsonl`` record (``round``, ``bytes_up``, ``global``, ...)."""

    def on_end(self, run: RunInfo) -> None:
        """After the last round, or when the process exits early (flush and close here)."""


def scalars(record: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """The numbers of a round record, flattened: ``{"global/digit/accuracy": 0.81, "bytes_up": 2.1e6, ...}``.

    ``round`` (the step) and non-numbers (the engine's name) are left out.
    """
    flat = flatten(record, sep)
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"}
