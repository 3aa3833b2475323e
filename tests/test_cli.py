"""The command line: demo, run, resume, report, config; errors exit 2 with a readable message."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedmtl.cli import app

runner = CliRunner()
SMALL = ["--set", "data.source.num_samples=1000", "--set", "data.num_clients=10", "--set", "server.fraction=0.5"]


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("demo", "run", "report", "config", "schema"):
        assert cmd in result.output


def test_demo_runs_and_writes_a_report(tmp_path):
    result = runner.invoke(app, ["demo", "--rounds", "2", "--out", str(tmp_path), "--quiet", *SMALL])
    assert result.exit_code == 0, result.output
    (run,) = list(tmp_path.iterdir())
    assert (run / "report.html").exists() and (run / "plots" / "task_metrics.png").exists()
    assert "global digit accuracy" in result.output


def test_run_resume_and_report(tmp_path):
    cfg = tmp_path / "c.yaml"
    runner.invoke(app, ["config", "--demo", *SMALL, "--set", f"output.dir={tmp_path}", "--set", "output.name=r", "--set", "server.rounds=1"], catch_exceptions=False)
    out = runner.invoke(app, ["config", "--demo", *SMALL, "--set", f"output.dir={tmp_path}", "--set", "output.name=r", "--set", "server.rounds=1"])
    cfg.write_text(out.stdout)
    assert runner.invoke(app, ["run", str(cfg), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "r"), "--set", "server.rounds=2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["rounds_completed"] == 2
    (tmp_path / "r" / "report.html").unlink()
    assert runner.invoke(app, ["report", str(tmp_path / "r")]).exit_code == 0
    assert (tmp_path / "r" / "report.html").exists()


def test_config_errors_exit_2_naming_the_field(tmp_path):
    result = runner.invoke(app, ["config", "--set", "server.rounds=-3"])
    assert result.exit_code == 2
    assert "server.rounds" in result.output and "greater than 0" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
