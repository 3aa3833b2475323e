"""The bring-your-own examples (examples/own_model.py, own_datasets.py) and docs/engines.md's example run as shipped."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "rounds"), [("own_model", 2), ("own_datasets", 3)])
def test_example_runs_and_learns_something(name: str, rounds: int, tmp_path: Path) -> None:
    module = runpy.run_path(str(ROOT / "examples" / f"{name}.py"))
    results = module["main"](rounds, str(tmp_path))
    assert results.summary["engine"] == "vectorized"
    assert results.summary["engine_clients"]["sequential"] == 0
    for task, metrics in results.summary["final_global"].items():
        assert metrics["accuracy"] >= 0.0, task
    if name == "own_datasets":  # separable synthetic data: 3 rounds already beat chance (0.1) by far
        assert results.summary["final_global"]["digit"]["accuracy"] > 0.5


def test_engines_doc_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    doc = (ROOT / "docs" / "engines.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/engines.md", "exec"), {})


@pytest.mark.parametrize("name", ["stragglers", "fedbuff"])
def test_systems_example_configs_run(name: str, tmp_path: Path) -> None:
    """examples/configs/{stragglers,fedbuff}.yaml through `fedmtl run`, shortened to 3 rounds (the full
    20 take about 15 s of CPU each)."""
    import json

    from typer.testing import CliRunner

    from fedmtl.cli import app

    path = ROOT / "examples" / "configs" / f"{name}.yaml"
    args = ["run", str(path), "--quiet", "--set", f"output.dir={tmp_path}", "--set", "server.rounds=3", "--set", "output.plots=false"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2, 3]
    times = [r["virtual_time"] for r in history]
    assert times == sorted(times) and times[0] > 0
    if name == "fedbuff":
        assert all(r["cohort_size"] == 10 and "staleness" in r for r in history)
    assert history[-1]["global"]["digit"]["accuracy"] >= 0.0
