"""PNG plots of a run, drawn from ``metrics.jsonl`` (so ``fedmtl report`` can redraw them any time)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from fedmtl._extras import require


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use (the ``plots`` extra)."""
    require("matplotlib", "plots", "plots").use("Agg")
    return require("matplotlib.pyplot", "plots", "plots")


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure (closing frees it: runs draw many)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def _rounds(records: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get(key)]


def plot_task_metrics(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Per-task primary metric (accuracy, or R^2) vs round: global model solid, personalised dashed."""
    evals = _rounds(records, "global")
    if not evals:
        return None
    tasks = list(evals[-1]["global"])
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for i, task in enumerate(tasks):
        color = f"C{i}"
        metric = "accuracy" if "accuracy" in evals[-1]["global"][task] else "r2"
        xs = [r["round"] for r in evals if task in r["global"]]
        ax.plot(xs, [r["global"][task][metric] for r in evals if task in r["global"]], color=color, marker="o", ms=3, label=f"{task} ({metric}, global)")
        pers = [(r["round"], r["personalized"]["per_task"].get(task)) for r in evals if r.get("personalized")]
        pers = [(x, y) for x, y in pers if y is not None]
        if pers:
            ax.plot(*zip(*pers), color=color, linestyle="--", label=f"{task} (personalised, mean over clients)")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy / R²")
    ax.set_title("Per-task performance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bytes(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Bytes sent per round, down and up, and their running totals."""
    if not records:
        return None
    xs = [r["round"] for r in records]
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for key, label, style in (("bytes_down", "downlink", "-"), ("bytes_up", "uplink", "--")):
        ys = [r.get(key, 0) / 1e6 for r in records]
        a1.plot(xs, ys, linestyle=style, marker="o", ms=3, label=label)
        a2.plot(xs, list(accumulate(ys)), linestyle=style, label=label)
    a1.set_title("MB per round")
    a2.set_title("MB cumulative")
    for a in (a1, a2):
        a.set_ylim(0, a.get_ylim()[1] * 1.15)  # from zero: a flat line near its mean is not a trend
        a.set_xlabel("round")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return _save(fig, path)


def plot_loss(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Training loss (mean over the cohort) and held-out loss per task vs round."""
    if not records:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    tasks = sorted({t for r in records for t in r.get("train_loss", {})})
    for i, task in enumerate(tasks):
        pts = [(r["round"], r["train_loss"][task]) for r in records if task in r.get("train_loss", {})]
        ax.plot(*zip(*pts), color=f"C{i}", label=f"{task} train")
        ev = [(r["round"], r["global"][task]["loss"]) for r in records if task in (r.get("global") or {})]
        if ev:
            ax.plot(*zip(*ev), color=f"C{i}", linestyle=":", label=f"{task} held-out")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_client_histogram(scores: Sequence[float], path: Path, title: str = "Personalised score per client") -> Path | None:
    """Distribution of the final per-client personalised score."""
    if not scores:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.8))
    ax.hist(scores, bins=min(30, max(5, len(scores) // 3)), color="C2", edgecolor="white")
    ax.axvline(sum(scores) / len(scores), color="k", linestyle="--", label="mean")
    ax.set_xlabel("score (mean primary metric over the client's tasks)")
    ax.set_ylabel("clients")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def draw_all(records: Sequence[dict[str, Any]], client_scores: Sequence[float], folder: Path) -> list[Path]:
    """Every standard plot of a run, into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        plot_task_metrics(records, folder / "task_metrics.png"),
        plot_bytes(records, folder / "bytes.png"),
        plot_loss(records, folder / "loss.png"),
        plot_client_histogram(client_scores, folder / "client_scores.png"),
    ]
    return [p for p in made if p is not None]
