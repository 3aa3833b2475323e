"""``fedmtl compare``: several runs side by side, per task, against rounds and against bytes sent.

Writes ``compare.html`` (a summary table, then the plots, self-contained) and one PNG per task into
the output folder; reads only the run folders' files (``metrics.jsonl``, ``summary.json``, ``config.yaml``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

from fedmtl.report.html import CSS, versions
from fedmtl.report.labels import headline, megabytes, metric, personalized_tasks, primary_metric, seconds
from fedmtl.report.metrics_log import read_metrics
from fedmtl.report.plots import _legend_outside, _round_axis, _save, log_axis, pyplot


@dataclass(frozen=True)
class Run:
    """One run folder's files, read once."""

    label: str
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path, label: str) -> Run:
        """Raises FileNotFoundError when ``run_dir`` has no ``metrics.jsonl``."""
        if not (run_dir / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: it has no metrics.jsonl")
        summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
        return cls(
            label=label,
            records=read_metrics(run_dir / "metrics.jsonl"),
            summary=json.loads(summary_path.read_text()) if summary_path.exists() else {},
            config=(yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {},
        )

    def tasks(self) -> list[str]:
        return sorted({t for r in self.records for t in (r.get("global") or {}) | (r.get("train_loss") or {})})

    def megabytes_sent(self) -> list[float]:
        """Cumulative MB (downlink + uplink) after each round: the x axis of the 'vs bytes' plots."""
        return list(accumulate((r.get("bytes_down", 0) + r.get("bytes_up", 0)) / 1e6 for r in self.records))


def labels_for(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or ``parent/name`` where two runs share a name."""
    names = [p.resolve().name for p in run_dirs]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def _primary(runs: Sequence[Run], task: str) -> str:
    for run in runs:
        for r in run.records:
            values = (r.get("global") or {}).get(task)
            if values:
                return "accuracy" if "accuracy" in values else "r2"
    return "accuracy"


def plot_task(runs: Sequence[Run], task: str, path: Path) -> Path:
    """One task, every run: primary metric and held-out loss, against rounds (left) and MB sent (right)."""
    key = _primary(runs, task)
    scale = 100.0 if key == "accuracy" else 1.0
    fig, axes = pyplot().subplots(2, 2, figsize=(12, 7.5), sharey="row")
    for i, run in enumerate(runs):
        sent = dict(zip((r["round"] for r in run.records), run.megabytes_sent()))
        evals = [r for r in run.records if task in (r.get("global") or {})]
        rounds = [r["round"] for r in evals]
        for row, (field, factor) in enumerate(((key, scale), ("loss", 1.0))):
            ys = [factor * r["global"][task][field] for r in evals]
            axes[row][0].plot(rounds, ys, color=f"C{i}", marker="o", ms=3, label=run.label)
            axes[row][1].plot([sent[x] for x in rounds], ys, color=f"C{i}", marker="o", ms=3, label=run.label)
    name = "accuracy (%)" if key == "accuracy" else "R²"
    for col in (0, 1):
        log_axis(axes[1][col])
        for row in (0, 1):
            axes[row][col].grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{task}: {name}")
    axes[1][0].set_ylabel(f"{task}: held-out loss (log)")
    for row in (0, 1):
        _round_axis(axes[row][0])
        axes[row][1].set_xlabel("MB sent (downlink + uplink, cumulative)")
    axes[0][0].set_title("by round")
    axes[0][1].set_title("by traffic")
    _legend_outside(axes[0][1])
    fig.suptitle(f"Task {task}: the global model on each run's held-out data")
    return _save(fig, path)


def summary_table(runs: Sequence[Run], tasks: Sequence[str]) -> str:
    """The runs as rows: what ran; per task the final global score, the personalised score pooled over the
    clients' test rows and that of the worst 10 % of clients (each task's primary metric); traffic, time."""
    head = ["run", "algorithm", "model · balancer", "compression", "privacy", "rounds"]
    head += [f"{t} ({what})" for t in tasks for what in ("global", "personalised, pooled", "personalised, worst 10 %")]
    head += ["MB sent", "training time"]
    rows = []
    for run in runs:
        what = dict(headline(run.config))
        s = run.summary
        final = s.get("final_global") or {}
        pers = personalized_tasks(s.get("final_personalized"))
        cells = [run.label, what["algorithm"], f"{what['model']} · {what['multi-task']}", what["compression"], what["privacy"]]
        cells.append(str(s.get("rounds_completed", len(run.records))))
        for task in tasks:
            values = final.get(task) or {}
            cells.append(_cell(values) if values else "not trained" if s.get("global_model") else "–")
            block = pers.get(task) or {}
            key = primary_metric(block.get("pooled") or values)
            cells.append(_cell(block.get("pooled") or {}, key))
            cells.append(_cell(block.get("worst10") or {}, key))
        sent = s.get("bytes_down_total", 0) + s.get("bytes_up_total", 0)
        cells.append(megabytes(sent) if sent else "–")
        cells.append(seconds(s["wall_seconds"]) if "wall_seconds" in s else "–")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _cell(values: Mapping[str, Any], key: str | None = None) -> str:
    """A task's primary metric (or ``key``) for a table cell: accuracy in %, R² as a number, – when absent."""
    key = key or primary_metric(values)
    return metric(key, values[key]) if key in values else "–"


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/compare.html`` and ``out/compare_<task>.png`` for the runs; return the HTML's path.

    Raises:
        FileNotFoundError: a folder is not a run folder.
        ValueError: no run folder given.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    paths = [Path(p) for p in run_dirs]
    runs = [Run.read(p, label) for p, label in zip(paths, labels_for(paths))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = sorted({t for run in runs for t in run.tasks()})
    figures = []
    for task in tasks:
        png = plot_task(runs, task, out / f"compare_{re.sub(r'[^A-Za-z0-9_-]', '_', task)}.png")
        data = base64.b64encode(png.read_bytes()).decode()
        caption = (f"Task {task}: the global model's score (top) and held-out loss (bottom) against rounds (left) "
                   "and against the megabytes sent so far (right), one colour per run.")
        figures.append(f'<figure class="wide"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedmtl compare · {len(runs)} runs</title>
<style>{CSS}</style></head><body>
<h1>fedmtl: {len(runs)} runs compared</h1>
<p class="meta">Written {written} with {html.escape(versions())}. Runs: {html.escape(', '.join(str(p) for p in paths))}.</p>
<h2>Summary</h2>{summary_table(runs, tasks)}
<p class="meta">Scores are each task's accuracy (R² for regression) after the last evaluated round. Global: the global
model on the run's held-out data (not trained: algorithm local has none). Personalised, pooled: every client's own
model on its own test rows, counted together. Worst 10 %: the mean over the tenth of clients the task serves worst.
MB sent counts both directions.</p>
<h2>Per task</h2><div class="plots">{''.join(figures) or '<p>No evaluated rounds to plot.</p>'}</div>
</body></html>
"""
    page_path = out / "compare.html"
    page_path.write_text(page)
    return page_path
