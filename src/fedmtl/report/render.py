"""Render a run folder's report: plots drawn from its files, then ``report.html``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fedmtl._extras import MissingExtraError
from fedmtl.report.html import write_report
from fedmtl.report.metrics_log import read_metrics
from fedmtl.report.plots import draw_all

log = logging.getLogger("fedmtl")


def render_report(run_dir: str | Path) -> Path:
    """(Re)draw a run's plots from its files and write its ``report.html``; return the report's path.

    Without matplotlib (the ``plots`` extra) the report is written without plots, and says so.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.jsonl``.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: it has no metrics.jsonl")
    records = read_metrics(metrics_path)
    clients_path = run_dir / "clients.json"
    clients = json.loads(clients_path.read_text()) if clients_path.exists() else []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    try:
        plots = draw_all(records, clients, run_dir / "plots")
        missing = ""
    except MissingExtraError as exc:
        log.warning("report without plots: %s", exc)
        plots, missing = [], str(exc)
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    return write_report(run_dir, config_text, summary, plots, note=missing)
