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
    assert "global digit accuracy" in result.output and "global digit macro-F1" in result.output
    assert "personalised digit accuracy" in result.output and "personalised parity ROC-AUC" in result.output
    assert "mean over clients" not in result.output  # no score averaged over tasks


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


def test_version_short_help_and_completion():
    import fedmtl

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"fedmtl {fedmtl.__version__} ")
    result = runner.invoke(app, ["-h"])
    assert result.exit_code == 0 and "--install-completion" in result.output
    assert runner.invoke(app, ["run", "-h"]).exit_code == 0


def test_misspelt_command_and_choice_get_a_suggestion():
    result = runner.invoke(app, ["dem"])
    assert result.exit_code == 2 and result.output.count("Did you mean 'demo'?") == 1
    result = runner.invoke(app, ["config", "--set", "mtl.balancer.name=pcgrd"])
    assert result.exit_code == 2 and "did you mean 'pcgrad'?" in result.output


def test_error_paths_are_the_users_keys():
    # pydantic's location holds the optimiser's tag (client.optimizer.sgd.lr); the user wrote client.optimizer.lr
    result = runner.invoke(app, ["config", "--set", "client.optimizer.lr=-1"])
    assert result.exit_code == 2 and "client.optimizer.lr: " in result.output and ".sgd." not in result.output
    result = runner.invoke(app, ["config", "--set", "comm.uplink=[{name: topk, fracton: 0.1}]"])
    assert "comm.uplink.0.fracton: Extra inputs" in result.output and "did you mean 'fraction'?" in result.output


def test_run_with_set_only_uses_the_defaults(tmp_path):
    result = runner.invoke(
        app,
        ["run", "--quiet", "--set", "server.rounds=1", "--set", f"output.dir={tmp_path}", "--set", "output.name=s",
         "--set", "data.source.num_samples=600", "--set", "data.num_clients=4", "--set", "output.plots=false"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["rounds_completed"] == 1
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "--set" in result.output


def test_demo_help_states_the_demo_configs_values():
    import yaml

    from fedmtl.cli import _demo_config_path

    demo = yaml.safe_load(_demo_config_path().read_text())
    import re

    text = " ".join(re.sub("[│╭╮╰╯─]", " ", runner.invoke(app, ["demo", "--help"]).output).split())
    data = demo["data"]
    assert f"{data['num_clients']} MNIST-1D clients" in text
    assert f"{len(data['source']['tasks'])} tasks ({', '.join(data['source']['tasks'])})" in text
    assert f"alpha = {data['partition']['alpha']}" in text
    assert f"each holding {data['task_assignment']['tasks_per_client']} of them" in text
    assert f"{demo['server']['rounds']} rounds" in text and f"the demo's {demo['server']['rounds']})" in text


def test_flower_new_writes_the_shipped_app(tmp_path):
    from pathlib import Path

    result = runner.invoke(app, ["flower", "new", str(tmp_path / "app")])
    assert result.exit_code == 0, result.output
    example = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
    names = sorted(p.name for p in (tmp_path / "app").iterdir())
    assert names == sorted(p.name for p in example.iterdir() if p.is_file())  # the example is this template
    for name in names:
        assert (tmp_path / "app" / name).read_text() == (example / name).read_text()
    result = runner.invoke(app, ["flower", "new", str(tmp_path / "app")])
    assert result.exit_code == 2 and "--force" in result.output
    assert runner.invoke(app, ["flower", "new", str(tmp_path / "app"), "--force"]).exit_code == 0


def test_a_missing_extra_is_named_in_full(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d", None)  # as if the mnist1d extra were not installed
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    result = runner.invoke(app, ["demo", "--rounds", "1", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2
    assert "pip install 'fedmtl[mnist1d]'" in " ".join(result.output.split())  # not eaten as console markup
