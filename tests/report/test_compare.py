"""``fedmtl compare``: several runs per task, by round and by bytes, with a summary table."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from fedmtl.cli import app
from fedmtl.report.compare import Run, compare_runs, labels_for


def make_run(folder, accuracy, codec="identity", rounds=4):
    folder.mkdir(parents=True)
    records = [
        {"round": r, "bytes_down": 1_000_000, "bytes_up": 500_000 if codec == "identity" else 50_000,
         "train_loss": {"y": 1.0 / r, "z": 2.0 / r},
         **({"global": {"y": {"loss": 1.0 / r, "accuracy": accuracy * r / rounds}, "z": {"loss": 2.0 / r, "r2": 0.1 * r}}} if r % 2 == 0 else {})}
        for r in range(1, rounds + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"rounds_completed": rounds, "wall_seconds": 12.5,
               "bytes_down_total": sum(r["bytes_down"] for r in records), "bytes_up_total": sum(r["bytes_up"] for r in records),
               "final_global": records[-1]["global"],
               "final_personalized": {"y": {"pooled": {"accuracy": 0.65}, "clients": 4, "median": {"accuracy": 0.6}, "worst10": {"accuracy": 0.3}},
                                      "z": {"pooled": {"rmse": 2.0, "r2": 0.25}, "clients": 4, "median": {"r2": 0.2}, "worst10": {"r2": -0.5}}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {"algorithm": {"name": "fedavg"}, "comm": {"uplink": [{"name": codec}], "downlink": [{"name": "identity"}]},
              "model": {"name": "hard_sharing"}, "mtl": {"balancer": {"name": "equal"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_compare_writes_a_page_and_a_plot_per_task(tmp_path):
    pytest.importorskip("matplotlib")
    a = make_run(tmp_path / "a" / "run", 0.8)
    b = make_run(tmp_path / "b" / "run", 0.6, codec="topk")
    page = compare_runs([a, b], tmp_path / "out").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.html", "compare_y.png", "compare_z.png"]
    assert "<td>a/run</td>" in page and "<td>b/run</td>" in page  # same folder names: their parents tell them apart
    assert "<td>80.0 %</td>" in page and "<td>60.0 %</td>" in page  # y's final accuracy, in %
    assert "<td>0.4</td>" in page  # z is a regression task: R², not %
    assert "<td>6.0 MB</td>" in page and "<td>4.2 MB</td>" in page  # both directions, 4 rounds
    assert "uplink topk" in page and "<td>65.0 %</td>" in page and "<td>30.0 %</td>" in page  # y personalised: pooled, worst 10 %
    assert "<td>0.25</td>" in page and "<td>-0.5</td>" in page  # z personalised: R² pooled, worst 10 %
    assert "y (personalised, pooled)" in page and "personalised mean" not in page


def test_megabytes_sent_accumulate_both_directions(tmp_path):
    run = Run.read(make_run(tmp_path / "r", 0.5), "r")
    assert run.megabytes_sent() == pytest.approx([1.5, 3.0, 4.5, 6.0])
    assert run.tasks() == ["y", "z"]


def test_labels_are_folder_names_unless_they_clash(tmp_path):
    assert labels_for([tmp_path / "x" / "one", tmp_path / "y" / "two"]) == ["one", "two"]
    assert labels_for([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == ["x/run", "y/run"]


def test_cli_compare(tmp_path):
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    a, b = make_run(tmp_path / "a", 0.8), make_run(tmp_path / "b", 0.7)
    result = runner.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "compare.html").exists()
    result = runner.invoke(app, ["compare", str(a), str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a run folder" in result.output
