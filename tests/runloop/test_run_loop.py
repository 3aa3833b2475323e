"""The one run loop (fedmtl.runloop.loop.run_rounds) over a scripted runner: cadences, stops, resume, summary."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from fedmtl.config import config_from_dict
from fedmtl.fl.federation import ServerState
from fedmtl.runloop.checkpoint import list_checkpoints, load_latest
from fedmtl.runloop.loop import Evaluation, RoundResult, run_rounds


class Scripted:
    """A runner whose round adds 1 to a single parameter; it may stop after ``budget`` rounds."""

    engine = "scripted"

    def __init__(self, budget: int | None = None, trains_global_model: bool = True):
        self.budget = budget
        self.algorithm = SimpleNamespace(name="scripted", trains_global_model=trains_global_model)
        self.started: list[int] = []
        self.ran: list[int] = []
        self.evaluated: list[int] = []

    def init_state(self) -> ServerState:
        return ServerState(0, {"w": torch.zeros(1)}, {})

    def start(self, state: ServerState) -> None:
        self.started.append(state.round)

    def can_run_round(self, state: ServerState) -> bool:
        return self.budget is None or state.round < self.budget

    def stop_reason(self, state: ServerState) -> str:
        return "" if self.can_run_round(state) else "budget spent"

    def run_round(self, state: ServerState) -> RoundResult:
        self.ran.append(state.round + 1)
        new = replace(state, round=state.round + 1, params={"w": state.params["w"] + 1})
        return RoundResult(new, {"round": new.round, "bytes_down": 10, "bytes_up": 3})

    def evaluate(self, state: ServerState) -> Evaluation:
        self.evaluated.append(state.round)
        rows = [{"client": 0, "rows": {"t": 1}, "tasks": {"t": {"accuracy": 1.0}}}]
        return Evaluation({"global": {"t": {"accuracy": state.round / 10}}}, rows)

    def summary(self, state, history):
        return {"runner": len(history)}


def _cfg(tmp_path, rounds=5, every=2, checkpoint_every=2):
    return config_from_dict(
        {
            "server": {"rounds": rounds},
            "evaluation": {"every": every},
            "output": {"dir": str(tmp_path), "checkpoint_every": checkpoint_every, "keep_checkpoints": 10},
        }
    )


def _rounds_saved(run_dir):
    return sorted(int(p.name[6:12]) for p in list_checkpoints(run_dir))


class Recorder:
    def __init__(self):
        self.calls: list[object] = []

    def start(self, done, total):
        self.calls.append(("start", done, total))

    def update(self, record):
        self.calls.append(record["round"])

    def close(self):
        self.calls.append("close")


def test_cadences_of_evaluation_checkpoints_and_records(tmp_path):
    runner, progress, seen = Scripted(), Recorder(), []
    out = run_rounds(runner, _cfg(tmp_path), tmp_path, progress=progress, on_record=seen.append)
    assert runner.ran == [1, 2, 3, 4, 5] and runner.started == [0]
    assert runner.evaluated == [2, 4, 5]  # every 2 rounds and after the last
    assert _rounds_saved(tmp_path) == [2, 4, 5]
    assert [("global" in r) for r in out.history] == [False, True, False, True, True]
    assert [r["round"] for r in seen] == [1, 2, 3, 4, 5]
    assert progress.calls == [("start", 0, 5), 1, 2, 3, 4, 5, "close"]
    elapsed = [r["elapsed"] for r in out.history]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == out.summary
    assert summary["rounds_completed"] == 5 and summary["engine"] == "scripted" and summary["runner"] == 5
    assert summary["bytes_down_total"] == 50 and summary["bytes_up_total"] == 15
    assert summary["final_global"] == {"t": {"accuracy": 0.5}} and "stopped_early" not in summary
    assert json.loads((tmp_path / "clients.json").read_text())[0]["client"] == 0
    assert load_latest(tmp_path)[0].params["w"].item() == 5.0


def test_a_stop_reason_ends_the_run_with_a_checkpoint_and_says_why(tmp_path):
    runner = Scripted(budget=3)
    out = run_rounds(runner, _cfg(tmp_path, checkpoint_every=10), tmp_path)
    assert runner.ran == [1, 2, 3]
    assert _rounds_saved(tmp_path) == [3]  # not due, but no further round may run
    assert out.summary["stopped_early"] == "budget spent" and out.summary["rounds_completed"] == 3
    assert not (tmp_path / "clients.json").exists()  # the last configured round never ran


def test_resume_continues_from_the_newest_checkpoint_and_drops_later_records(tmp_path):
    uninterrupted = run_rounds(Scripted(), _cfg(tmp_path / "a"), tmp_path / "a")
    run_rounds(Scripted(), _cfg(tmp_path / "b", rounds=3), tmp_path / "b")  # checkpoints after 2 and 3
    (tmp_path / "b" / "checkpoints" / "round-000003.safetensors").unlink()  # killed before round 3's checkpoint
    runner = Scripted()
    out = run_rounds(runner, _cfg(tmp_path / "b"), tmp_path / "b", resume=True)
    assert runner.started == [2] and runner.ran == [3, 4, 5]
    assert [r["round"] for r in out.history] == [1, 2, 3, 4, 5]
    assert out.state.params["w"].item() == uninterrupted.state.params["w"].item() == 5.0
    assert out.summary["final_global"] == uninterrupted.summary["final_global"]


def test_resume_without_a_checkpoint_starts_from_round_zero_and_a_fresh_run_clears_the_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1, "bytes_up": 99}) + "\n")
    runner = Scripted()
    out = run_rounds(runner, _cfg(tmp_path, rounds=2), tmp_path, resume=True)
    assert runner.started == [0] and [r["bytes_up"] for r in out.history] == [3, 3]


def test_a_process_that_does_not_write_runs_every_round_and_writes_nothing(tmp_path):
    runner = Scripted()
    out = run_rounds(runner, _cfg(tmp_path), tmp_path, writes=False)
    assert runner.ran == [1, 2, 3, 4, 5] and out.state.round == 5
    assert not list_checkpoints(tmp_path) and not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "config.yaml").exists()


def test_no_global_model_is_said_in_the_summary(tmp_path):
    out = run_rounds(Scripted(trains_global_model=False), _cfg(tmp_path, rounds=1), tmp_path)
    assert "not trained" in out.summary["global_model"]


def test_an_interrupted_run_says_how_to_resume_and_closes_its_progress(tmp_path, caplog):
    class Interrupted(Scripted):
        def run_round(self, state):
            if state.round == 1:
                raise KeyboardInterrupt
            return super().run_round(state)

    progress = Recorder()
    with pytest.raises(KeyboardInterrupt):
        run_rounds(Interrupted(), _cfg(tmp_path, checkpoint_every=1), tmp_path, progress=progress, resume_hint="do X")
    assert progress.calls[-1] == "close" and _rounds_saved(tmp_path) == [1]
    assert "interrupted at round 1; resume with: do X" in caplog.text
