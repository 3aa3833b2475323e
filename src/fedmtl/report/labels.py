"""Readable names, units and colours shared by the plots, the HTML report and ``fedmtl compare``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: what the report's terms mean (shown as its glossary)
GLOSSARY = {
    "global model": "the one model the server holds after a round, scored on the server's held-out data "
    "(rows no client trains on). Algorithm local trains none: it reports no global metrics.",
    "personalised": "each client's own model (the global model adapted by the algorithm: its own heads, "
    "fine-tuning, a mixture, ...), scored on that client's own test split, task by task (scores of "
    "different tasks are never averaged together).",
    "pooled": "a personalised metric over every client's test rows together: each client's models score "
    "its own rows, and the counts are added before the metric is computed (a client weighs its rows).",
    "median client": "the median over clients of a task's personalised metric. A client whose metric is "
    "undefined (R² on fewer than 2 rows or equal targets, ROC-AUC with one label) is left out.",
    "worst 10 %": "the mean of a task's personalised metric over the 10 % of clients it serves worst (at least "
    "one client; the highest values for loss, RMSE and MAE): how well the federation serves them.",
    "accuracy, macro-F1": "multiclass: the share of rows classified right; the F1 score of each class "
    "present or predicted, averaged over classes with equal weight.",
    "F1, ROC-AUC": "binary: the F1 score of the positive class (threshold 0.5); the probability that a "
    "positive row scores above a negative one (from 200-bin score histograms, so it adds across clients).",
    "RMSE, MAE, R²": "regression: root mean squared and mean absolute error, in the target's original units "
    "(the data path standardises targets for training and scales these back); R² = 1 - SSE / SST.",
    "loss": "the training objective per row: cross-entropy (classification) or mean squared error in "
    "standardised units (regression).",
    "downlink / uplink": "bytes the server sends to the round's clients / the clients send back, after "
    "compression, secure aggregation and wire framing included (1 MB = 10⁶ bytes).",
    "round": "one cycle: the server samples a cohort of clients, they train locally, the server aggregates.",
    "ε (epsilon)": "the differential-privacy budget spent so far at the configured δ (smaller is more private).",
}

#: readable metric names (the keys are those of :meth:`fedmtl.tasks.Task.finalize`)
METRIC_NAMES = {
    "loss": "loss",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "f1": "F1",
    "auc": "ROC-AUC",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
}

_SUMMARY_LABELS = {
    "rounds_completed": "rounds completed",
    "engine": "engine",
    "wall_seconds": "training time",
    "bytes_down_total": "downlink, total",
    "bytes_up_total": "uplink, total",
    "seed": "seed",
    "stopped_early": "stopped early",
}

#: metrics that are shares (shown in %)
PERCENT_METRICS = ("accuracy",)


def metric_name(name: str) -> str:
    """``"macro_f1"`` -> ``"macro-F1"``, ``"r2"`` -> ``"R²"``."""
    return METRIC_NAMES.get(name, name)


def primary_metric(values: Mapping[str, Any]) -> str:
    """The metric a task's results lead with: accuracy (classification), else R² (regression)."""
    return "accuracy" if "accuracy" in values else "r2"


def personalized_tasks(block: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The per-task entries of a ``personalized`` block (task -> pooled, median, worst10, clients, undefined);
    a run folder written before per-task results (a mean over tasks) gives none."""
    return {t: v for t, v in (block or {}).items() if isinstance(v, Mapping) and isinstance(v.get("pooled"), Mapping)}


def megabytes(n: float) -> str:
    """``276214820`` -> ``"276.2 MB"`` (decimal units, as network traffic is counted)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"


def seconds(s: float) -> str:
    """``83.4`` -> ``"1 min 23 s"``."""
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def metric(name: str, value: Any) -> str:
    """A metric value for people: accuracy in %, others to 4 significant digits; None (not finite) as n/a."""
    if value is None:
        return "n/a"
    if not isinstance(value, (int, float)):
        return str(value)
    if name in PERCENT_METRICS:
        return f"{100 * value:.1f} %"
    return f"{value:.4g}"


def metrics(values: Mapping[str, Any]) -> str:
    """``{"accuracy": 0.5, "loss": 1.2}`` -> ``"accuracy 50.0 %, loss 1.2"``."""
    return ", ".join(f"{metric_name(k)} {metric(k, v)}" for k, v in values.items())


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary table of a run: readable names, values in their units."""
    rows: list[tuple[str, str]] = []
    for key, label in _SUMMARY_LABELS.items():
        if key not in summary or summary[key] is None:
            continue
        value = summary[key]
        if key.startswith("bytes"):
            rows.append((label, megabytes(value)))
        elif key == "wall_seconds":
            rows.append((label, seconds(value)))
        else:
            rows.append((label, str(value)))
    for reason in summary.get("engine_fallback") or []:
        rows.append(("sequential fallback", str(reason)))
    if summary.get("global_model"):
        rows.append(("global model", str(summary["global_model"])))
    for task, values in (summary.get("final_global") or {}).items():
        rows.append((f"global model · {task}", metrics(values)))
    for task, block in personalized_tasks(summary.get("final_personalized")).items():
        rows.extend(personalized_rows(task, block))
    privacy = summary.get("privacy") or {}
    if "epsilon" in privacy:
        rows.append(("privacy · ε spent", f"{privacy['epsilon']:.3g}" + (f" at δ = {privacy['delta']:g}" if "delta" in privacy else "")))
    if "dp_sgd_max_client_epsilon" in privacy:
        rows.append(("privacy · largest client ε (DP-SGD)", f"{privacy['dp_sgd_max_client_epsilon']:.3g}"))
    return rows


def personalized_rows(task: str, block: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One task's personalised results as table rows: pooled metrics, then the median and worst-10 % client."""
    clients = block.get("clients")
    rows = [(f"personalised · {task} · pooled over {clients} clients' test rows", metrics(block["pooled"]))]
    for key, label in (("median", "median client"), ("worst10", "worst 10 % of clients")):
        shown = {k: v for k, v in (block.get(key) or {}).items() if k != "loss"}
        if shown:
            rows.append((f"personalised · {task} · {label}", metrics(shown)))
    undefined = block.get("undefined") or {}
    if undefined:
        rows.append((f"personalised · {task} · undefined", ", ".join(f"{metric_name(k)} for {n} client{'' if n == 1 else 's'}" for k, n in undefined.items())))
    return rows


def task_colors(tasks: Iterable[str]) -> dict[str, str]:
    """One colour per task, the same in every plot of a run (and across runs with the same tasks)."""
    return {task: f"C{i % 10}" for i, task in enumerate(sorted(set(tasks)))}


def headline(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The configuration in one glance: data, model, balancer, algorithm, codecs, privacy, rounds."""

    def name(section: Any) -> str:
        return str(section.get("name")) if isinstance(section, Mapping) else str(section)

    def kind(section: Any) -> str:
        """``dirichlet (alpha 0.5)``: the kind and its set parameters."""
        params = [f"{k} {v}" for k, v in (section.items() if isinstance(section, Mapping) else []) if k != "name" and v is not None]
        return name(section) + (f" ({', '.join(params)})" if params else "")

    def chain(codecs: Any) -> str:
        names = [name(c) for c in codecs or []]
        return " → ".join(names) if names and names != ["identity"] else "none (32-bit floats)"

    data = config.get("data", {})
    source = data.get("source", {})
    model = config.get("model", {})
    server = config.get("server", {})
    privacy = config.get("privacy", {}) or {}
    cohort = server.get("clients_per_round") or (
        f"{100 * server['fraction']:.0f} % of clients" if server.get("fraction") else "every client"
    )
    used = [k for k in ("dp", "secure_aggregation", "dp_sgd") if privacy.get(k)]
    labels = {"dp": "client-level DP", "secure_aggregation": "secure aggregation", "dp_sgd": "DP-SGD"}
    trunk = model.get("trunk")
    return [
        ("data", f"{name(source)} · tasks {', '.join(source.get('tasks', []) or []) or '-'} · "
                 f"{data.get('num_clients', '?')} clients, {kind(data.get('partition', {}))} partition"),
        ("model", name(model) + (f" (trunk {name(trunk)})" if isinstance(trunk, Mapping) else "")),
        ("multi-task", f"balancer {name(config.get('mtl', {}).get('balancer', {}))}, scheme {name(config.get('mtl', {}).get('scheme', {}))}"),
        ("algorithm", f"{name(config.get('algorithm', {}))}, server optimiser {name(server.get('optimizer', {}))}, "
                      f"aggregator {name(server.get('aggregator', {}))}"),
        ("rounds", f"{server.get('rounds', '?')} rounds, cohort {cohort}"),
        ("compression", f"uplink {chain(config.get('comm', {}).get('uplink'))}; downlink {chain(config.get('comm', {}).get('downlink'))}"),
        ("privacy", ", ".join(labels[k] for k in used) or "none"),
    ]
