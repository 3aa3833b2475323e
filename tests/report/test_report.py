"""The report: readable names and units, what ran, captions, one colour per task, a glossary."""

from __future__ import annotations

import pytest

from fedmtl.report import labels, plots
from fedmtl.report.html import write_report

RECORDS = [
    {
        "round": r,
        "bytes_down": 2_000_000,
        "bytes_up": 1_000_000,
        "train_loss": {"digit": 2.0 / r, "parity": 0.7 / r},
        **(
            {
                "global": {"digit": {"loss": 1.9 / r, "accuracy": 0.2 * r}, "parity": {"loss": 0.69 / r, "accuracy": 0.5 + 0.1 * r}},
                "personalized": {
                    "digit": {"pooled": {"loss": 1.5, "accuracy": 0.3, "macro_f1": 0.25}, "clients": 3,
                              "median": {"accuracy": 0.3}, "worst10": {"accuracy": 0.1}},
                    "parity": {"pooled": {"loss": 0.6, "accuracy": 0.6, "f1": 0.5, "auc": 0.7}, "clients": 3,
                               "median": {"accuracy": 0.6}, "worst10": {"accuracy": 0.4}},
                },
            }
            if r % 2 == 0
            else {}
        ),
    }
    for r in range(1, 5)
]
SUMMARY = {
    "rounds_completed": 4,
    "engine": "vectorized",
    "wall_seconds": 83.4,
    "bytes_down_total": 276_214_820,
    "bytes_up_total": 4_000_000,
    "final_global": {"digit": {"loss": 0.475, "accuracy": 0.8}},
    "final_personalized": {
        "digit": {"pooled": {"loss": 1.2, "accuracy": 0.5, "macro_f1": 0.42}, "clients": 10,
                  "median": {"loss": 1.1, "accuracy": 0.5, "macro_f1": 0.4}, "worst10": {"loss": 2.5, "accuracy": 0.25, "macro_f1": 0.2}},
        "size": {"pooled": {"loss": 0.3, "rmse": 12.5, "mae": 9.75, "r2": 0.7}, "clients": 10,
                 "median": {"rmse": 11.0, "mae": 9.0, "r2": 0.72}, "worst10": {"rmse": 30.0, "mae": 25.0, "r2": 0.1},
                 "undefined": {"r2": 2}},
    },
    "privacy": {"epsilon": 3.2, "delta": 1e-5},
    "data": {"clients": 10},
}
CLIENTS = [  # clients.json
    {"client": 0, "rows": {"digit": 5, "size": 2}, "tasks": {"digit": {"accuracy": 0.2}, "size": {"rmse": 3.0, "mae": 2.0}}},
    {"client": 1, "rows": {"digit": 9, "size": 9}, "tasks": {"digit": {"accuracy": 0.5}, "size": {"rmse": 2.0, "mae": 1.0, "r2": 0.5}}},
    {"client": 2, "rows": {"parity": 7}, "tasks": {"parity": {"accuracy": 0.9, "f1": 0.9}}},
]
CONFIG = """
data: {source: {name: mnist1d, tasks: [digit, parity]}, num_clients: 10, partition: {name: dirichlet, alpha: 0.5}}
model: {name: hard_sharing, trunk: {name: mlp}}
mtl: {balancer: {name: pcgrad}, scheme: {name: weighted_sum}}
algorithm: {name: ditto}
server: {rounds: 4, fraction: 0.3, optimizer: {name: fedadam}, aggregator: {name: median}}
comm: {uplink: [{name: topk}, {name: int8}], downlink: [{name: identity}]}
privacy: {dp: {clip_norm: 1.0}, secure_aggregation: null}
"""


def test_units_are_readable():
    assert labels.megabytes(276_214_820) == "276.2 MB"
    assert labels.megabytes(1_500) == "1.5 kB" and labels.megabytes(2.5e9) == "2.50 GB"
    assert labels.seconds(83.4) == "1 min 23 s" and labels.seconds(12.34) == "12.3 s"
    assert labels.metrics({"loss": 0.475, "accuracy": 0.8}) == "loss 0.475, accuracy 80.0 %"


def test_summary_rows_use_names_and_units():
    rows = dict(labels.summary_rows(SUMMARY))
    assert rows["downlink, total"] == "276.2 MB" and rows["training time"] == "1 min 23 s"
    assert rows["personalised · digit · pooled over 10 clients' test rows"] == "loss 1.2, accuracy 50.0 %, macro-F1 0.42"
    assert rows["personalised · digit · worst 10 % of clients"] == "accuracy 25.0 %, macro-F1 0.2"  # no loss
    assert rows["personalised · size · median client"] == "RMSE 11, MAE 9, R² 0.72"
    assert rows["personalised · size · undefined"] == "R² for 2 clients"
    assert not any("mean over" in k for k in rows)  # no score averaged over tasks
    assert rows["global model · digit"] == "loss 0.475, accuracy 80.0 %"
    assert rows["privacy · ε spent"] == "3.2 at δ = 1e-05"
    assert not any("_" in k for k in rows)  # no raw keys


def test_headline_names_the_choices_that_matter():
    import yaml

    rows = dict(labels.headline(yaml.safe_load(CONFIG)))
    assert rows["data"] == "mnist1d · tasks digit, parity · 10 clients, dirichlet (alpha 0.5) partition"
    assert "pcgrad" in rows["multi-task"] and rows["algorithm"] == "ditto, server optimiser fedadam, aggregator median"
    assert rows["rounds"] == "4 rounds, cohort 30 % of clients"
    assert rows["compression"] == "uplink topk → int8; downlink none (32-bit floats)"
    assert rows["privacy"] == "client-level DP"


def test_a_task_has_one_colour_in_every_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.draw_all(RECORDS, CLIENTS, tmp_path)
    seen: dict[str, set[str]] = {}
    for fig in figures:
        for ax in fig.axes:
            for line in ax.get_lines():
                task = line.get_label().split(":")[0]
                if task in ("digit", "parity"):
                    seen.setdefault(task, set()).add(line.get_color())
    assert seen == {"digit": {"C0"}, "parity": {"C1"}}
    assert labels.task_colors(["parity", "digit"]) == {"digit": "C0", "parity": "C1"}


def test_report_has_versions_date_headline_captions_and_glossary(tmp_path):
    pytest.importorskip("matplotlib")
    import platform

    import torch

    import fedmtl

    made = plots.draw_all(RECORDS, CLIENTS, tmp_path / "plots")
    assert sorted(p.stem for p in made) == sorted(plots.CAPTIONS)
    page = write_report(tmp_path, CONFIG, SUMMARY, made).read_text()
    assert f"fedmtl {fedmtl.__version__}" in page and f"torch {torch.__version__}" in page
    assert f"Python {platform.python_version()}" in page and "Report written 20" in page
    assert "client-level DP" in page and "276.2 MB" in page and "80.0 %" in page
    for caption in plots.CAPTIONS.values():
        assert f"<figcaption>{caption.replace(chr(39), '&#x27;')}</figcaption>" in page
    assert "<dt>worst 10 %</dt>" in page and "<dt>personalised</dt>" in page
    assert "bytes_down_total" not in page and "worst10" not in page


def test_report_without_matplotlib_says_which_extra(tmp_path):
    page = write_report(tmp_path, CONFIG, SUMMARY, [], note="plots needs 'matplotlib': pip install 'fedmtl[plots]'").read_text()
    assert "No plots." in page and "fedmtl[plots]" in page


def test_report_renders_in_a_headless_browser(tmp_path):
    """The page a user opens: its screenshot shows the text and the plots (not a blank or broken page)."""
    pytest.importorskip("matplotlib")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("screenshot", Path(__file__).resolve().parents[2] / "scripts" / "screenshot.py")
    assert spec is not None and spec.loader is not None
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    if shot.find_browser() is None:
        pytest.skip("no headless browser (apt-get install chromium-headless-shell)")
    import matplotlib.image

    made = plots.draw_all(RECORDS, CLIENTS, tmp_path / "plots")
    page = write_report(tmp_path, CONFIG, SUMMARY, made)
    image = matplotlib.image.imread(shot.screenshot(page, tmp_path / "report.png", width=1200, height=2600))
    assert image.shape[:2] == (2600, 1200)
    inked = image[..., :3].min(axis=(1, 2)) < 0.5  # rows with a dark pixel: text, table lines, plot lines
    assert inked.sum() > 800, inked.sum()
    # the plots drew: the task colours (C0 blue, C1 orange) appear on the page
    blue = (abs(image[..., 0] - 0.12) < 0.06) & (abs(image[..., 1] - 0.47) < 0.06) & (abs(image[..., 2] - 0.71) < 0.06)
    orange = (abs(image[..., 0] - 1.0) < 0.06) & (abs(image[..., 1] - 0.5) < 0.06) & (abs(image[..., 2] - 0.05) < 0.08)
    assert blue.sum() > 200 and orange.sum() > 200


def test_render_report_without_matplotlib_writes_a_plotless_report(tmp_path, monkeypatch, caplog):
    import json
    import sys

    from fedmtl.report import render_report

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    (tmp_path / "config.yaml").write_text(CONFIG)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were not installed
    page = render_report(tmp_path).read_text()
    assert "No plots." in page and "pip install &#x27;fedmtl[plots]&#x27;" in page
    assert "276.2 MB" in page and "report without plots" in caplog.text
