"""PNG plots of a run, drawn from ``metrics.jsonl`` (so ``fedmtl report`` can redraw them any time).

Every plot gives a task the same colour (:func:`fedmtl.report.labels.task_colors`), keeps its legend
outside the data, and has a caption (:data:`CAPTIONS`) that the HTML report shows under it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from fedmtl._extras import require
from fedmtl.fl.evaluation import worst_mean
from fedmtl.report.labels import metric_name, personalized_tasks, primary_metric, task_colors

#: what each plot shows, by file stem (the report's captions)
CAPTIONS = {
    "task_metrics": "Per-task score by round: the global model on the server's held-out data (solid) and the "
    "personalised models pooled over all clients' test rows (dashed). Accuracy in %, R² for regression.",
    "loss": "Per-task loss by round (log scale): training loss averaged over the round's cohort (solid) and "
    "the global model's held-out loss (dotted).",
    "bytes": "Traffic by round: megabytes the server sent to the cohort (downlink) and the cohort sent back "
    "(uplink), per round (left) and accumulated (right).",
    "client_metrics": "Final personalised score of each client, one panel per task (accuracy in %, R² for "
    "regression; clients whose R² is undefined are left out); the dashed line is the median client, "
    "the dotted one the mean of the worst 10 %.",
}
UP, DOWN = "#b5651d", "#333333"  # not task colours: traffic is not a task


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use (the ``plots`` extra)."""
    require("matplotlib", "plots", "plots").use("Agg")
    return require("matplotlib.pyplot", "plots", "plots")


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure (closing frees it: runs draw many)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _round_axis(ax: Any) -> None:
    """Rounds are whole numbers: no 2.5 on the x axis."""
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(require("matplotlib.ticker", "plots", "plots").MaxNLocator(integer=True))


def log_axis(ax: Any) -> None:
    """A log-scale y axis labelled 0.6, 2 rather than 6×10⁻¹, 2×10⁰ (minor ticks too, within a decade)."""
    ax.set_yscale("log")
    ticker = require("matplotlib.ticker", "plots", "plots")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g") if high / low < 10 else ticker.NullFormatter())


def _rounds(records: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get(key)]


def run_tasks(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every task a run's records mention, sorted (the key of :func:`task_colors`)."""
    names: set[str] = set()
    for r in records:
        names |= set(r.get("global") or {}) | set(r.get("train_loss") or {})
        names |= set(personalized_tasks(r.get("personalized")))
    return sorted(names)


def plot_task_metrics(records: Sequence[dict[str, Any]], path: Path, colors: Mapping[str, str] | None = None) -> Path | None:
    """Per-task primary metric (accuracy in %, or R²) vs round: global model solid, personalised (pooled) dashed."""
    evals = [r for r in records if r.get("global") or personalized_tasks(r.get("personalized"))]
    if not evals:
        return None
    colors = colors or task_colors(run_tasks(records))
    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    percent = True
    for task in sorted({t for r in evals for t in (r.get("global") or {}) | personalized_tasks(r.get("personalized"))}):
        glob = [(r["round"], r["global"][task]) for r in evals if task in (r.get("global") or {})]
        pers = [(r["round"], p[task]["pooled"]) for r in evals if task in (p := personalized_tasks(r.get("personalized")))]
        metric = primary_metric((glob or pers)[-1][1])
        scale = 100.0 if metric == "accuracy" else 1.0
        percent = percent and metric == "accuracy"
        for points, style, what in ((glob, "-", "global model"), (pers, "--", "personalised (pooled)")):
            points = [(x, scale * m[metric]) for x, m in points if m.get(metric) is not None]
            if points:
                marker = "o" if style == "-" else None
                ax.plot(*zip(*points), color=colors[task], linestyle=style, marker=marker, ms=3, label=f"{task}: {metric_name(metric)}, {what}")
    _round_axis(ax)
    ax.set_ylabel("accuracy (%)" if percent else "accuracy (%) / R²")
    ax.set_title("Per-task performance")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_bytes(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Megabytes per round, down and up, and their running totals (distinct colours, both lines visible)."""
    if not records:
        return None
    xs = [r["round"] for r in records]
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(12, 4.2))
    lines = (("bytes_down", "downlink (server → clients)", DOWN, "-", 2.6), ("bytes_up", "uplink (clients → server)", UP, "--", 1.6))
    for key, label, color, style, width in lines:
        ys = [r.get(key, 0) / 1e6 for r in records]
        marker = "o" if len(xs) <= 40 else None
        a1.plot(xs, ys, color=color, linestyle=style, linewidth=width, marker=marker, ms=3, label=label)
        a2.plot(xs, list(accumulate(ys)), color=color, linestyle=style, linewidth=width, label=label)
    a1.set_title("per round")
    a2.set_title("cumulative")
    for a in (a1, a2):
        a.set_ylim(0, a.get_ylim()[1] * 1.15)  # from zero: a flat line near its mean is not a trend
        _round_axis(a)
        a.set_ylabel("MB")
        a.grid(alpha=0.3)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.06))
    return _save(fig, path)


def plot_loss(records: Sequence[dict[str, Any]], path: Path, colors: Mapping[str, str] | None = None) -> Path | None:
    """Training loss (mean over the cohort) and held-out loss per task vs round."""
    if not records:
        return None
    colors = colors or task_colors(run_tasks(records))
    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    tasks = sorted({t for r in records for t in r.get("train_loss", {})})
    for task in tasks:
        pts = [(r["round"], r["train_loss"][task]) for r in records if task in r.get("train_loss", {})]
        ax.plot(*zip(*pts), color=colors[task], label=f"{task}: training (cohort mean)")
        ev = [(r["round"], r["global"][task]["loss"]) for r in records if task in (r.get("global") or {})]
        if ev:
            ax.plot(*zip(*ev), color=colors[task], linestyle=":", linewidth=2, label=f"{task}: held-out, global model")
    _round_axis(ax)
    ax.set_ylabel("loss (log scale)")
    log_axis(ax)
    ax.set_title("Per-task loss")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_client_metrics(
    clients: Sequence[Mapping[str, Any]], path: Path, colors: Mapping[str, str] | None = None
) -> Path | None:
    """Per task, the distribution over clients of the final personalised primary metric (accuracy in %, or
    R²), with the median client and the mean of the worst 10 %. ``clients``: the rows of ``clients.json``."""
    per_task: dict[str, list[Mapping[str, Any]]] = {}
    for row in clients:
        for task, values in (row.get("tasks") or {}).items():
            if isinstance(values, Mapping):  # a run folder from before per-task results holds floats: skipped
                per_task.setdefault(task, []).append(values)
    if not per_task:
        return None
    colors = colors or task_colors(per_task)
    tasks = sorted(per_task)
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(max(8, 3.6 * len(tasks)), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = primary_metric(per_task[task][0])
        share = metric == "accuracy"
        values = [(100 if share else 1) * m[metric] for m in per_task[task] if m.get(metric) is not None]
        left_out = len(per_task[task]) - len(values)
        title = f"{task}: {len(values)} client{'' if len(values) == 1 else 's'}" + (f" ({left_out} undefined)" if left_out else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{metric_name(metric)}" + (" (%)" if share else ""))
        if not values:
            continue
        ax.hist(values, bins=min(30, max(5, len(values) // 3)), color=colors[task], alpha=0.75, edgecolor="white")
        ax.axvline(statistics.median(values), color="k", linestyle="--", label="median client")
        ax.axvline(worst_mean(values), color="k", linestyle=":", label="worst 10 % (mean)")
    axes[0][0].set_ylabel("clients")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("Personalised score per client")
    return _save(fig, path)


def draw_all(records: Sequence[dict[str, Any]], clients: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
    """Every standard plot of a run, into ``folder``; returns the files written.

    ``clients``: the final per-client rows (``clients.json``: ``{"client", "rows", "tasks": {task: metrics}}``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    colors = task_colors(run_tasks(records) + [t for row in clients for t in (row.get("tasks") or {})])
    made = [
        plot_task_metrics(records, folder / "task_metrics.png", colors),
        plot_loss(records, folder / "loss.png", colors),
        plot_bytes(records, folder / "bytes.png"),
        plot_client_metrics(clients, folder / "client_metrics.png", colors),
    ]
    return [p for p in made if p is not None]
