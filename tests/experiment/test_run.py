"""Whole runs: they learn, write their folder, resume exactly, and survive damaged checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import fedmtl
from fedmtl.config import ConfigError
from fedmtl.report.metrics_log import flatten
from fedmtl.runloop.checkpoint import CheckpointError, list_checkpoints


def test_short_run_learns_every_task_and_writes_its_folder(tiny_config):
    cfg = {**tiny_config, "server": {"rounds": 12, "clients_per_round": 10}, "client": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}}}
    cfg["data"] = {**cfg["data"], "source": {"name": "mnist1d", "num_samples": 3000, "tasks": ["digit", "parity"]}}
    cfg["output"] = {**cfg["output"], "plots": True}
    res = fedmtl.Experiment(cfg).run(progress=False)
    final = res.summary["final_global"]
    assert final["digit"]["accuracy"] > 0.3  # chance: 0.1
    assert final["parity"]["accuracy"] > 0.6  # chance: 0.5
    pers = res.summary["final_personalized"]
    assert pers["digit"]["pooled"]["accuracy"] > 0.3 and pers["parity"]["pooled"]["accuracy"] > 0.6
    assert pers["digit"]["worst10"]["accuracy"] <= pers["digit"]["median"]["accuracy"] <= 1
    run = res.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "plots/task_metrics.png", "plots/bytes.png"):
        assert (run / name).exists(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, 13))
    first = lines[0]
    assert set(first["global"]) == {"digit", "parity"} and "accuracy" in first["global"]["digit"]
    assert first["bytes_up"] > 0 and first["bytes_down"] > 0 and first["round_seconds"] > 0
    assert set(first["personalized"]) == {"digit", "parity"}  # per task, never one score mixing them
    assert {"pooled", "median", "worst10", "clients"} <= set(first["personalized"]["digit"])
    assert {"accuracy", "macro_f1"} <= set(first["personalized"]["digit"]["pooled"])
    assert {"accuracy", "f1", "auc"} <= set(first["personalized"]["parity"]["pooled"])
    clients = json.loads((run / "clients.json").read_text())
    assert len(clients) == 10 and all(0 <= m["accuracy"] <= 1 for c in clients for m in c["tasks"].values())
    assert all(c["rows"][t] > 0 for c in clients for t in c["tasks"])
    assert (run / "plots/client_metrics.png").exists()
    assert "<img" in (run / "report.html").read_text()


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    full = fedmtl.Experiment({**tiny_config, "output": {**tiny_config["output"], "name": "full"}}).run(progress=False)

    # run the first two rounds only, as if the process had been killed after round 2
    part_cfg = {**tiny_config, "server": {**tiny_config["server"], "rounds": 2}, "output": {**tiny_config["output"], "name": "part"}}
    first = fedmtl.Experiment(part_cfg).run(progress=False)
    resumed = fedmtl.Experiment({**tiny_config, "output": {**tiny_config["output"], "name": "part"}}).run(resume=first.run_dir, progress=False)

    assert resumed.summary["rounds_completed"] == 3
    for name, value in full.params.items():
        assert torch.equal(value, resumed.params[name]), name
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("round_seconds", "elapsed")} for r in rs]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)


def test_a_field_added_since_the_run_started_does_not_block_its_resume(tiny_config):
    """A run whose config.yaml predates a field (here FedEM's ``gate``) resumes; resuming at the field's new
    default, which needs state the run never had, is refused before anything in the run folder changes."""
    import yaml

    paper = {**tiny_config, "algorithm": {"name": "fedem", "components": 2, "gate": False}}
    first = fedmtl.Experiment({**paper, "server": {**tiny_config["server"], "rounds": 1}}).run(progress=False)
    saved = first.run_dir / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["algorithm"]["gate"]  # as a fedmtl from before the gate wrote it
    saved.write_text(yaml.safe_dump(old))
    before = {p.name: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"has no \['gate'\], which algorithm 'fedem' as configured keeps"):
        fedmtl.Experiment({**tiny_config, "algorithm": {"name": "fedem", "components": 2}}).run(resume=first.run_dir, progress=False)
    assert {p.name: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()} == before  # nothing rewritten
    resumed = fedmtl.Experiment(paper).run(resume=first.run_dir, progress=False)
    assert resumed.summary["rounds_completed"] == 3


def test_resume_with_changed_model_is_refused(tiny_config):
    first = fedmtl.Experiment({**tiny_config, "server": {**tiny_config["server"], "rounds": 1}}).run(progress=False)
    changed = {**tiny_config, "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [32]}}}
    with pytest.raises(ConfigError, match=r"changed: \['model.trunk.hidden"):
        fedmtl.Experiment(changed).run(resume=first.run_dir, progress=False)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tiny_config, caplog):
    cfg = {**tiny_config, "output": {**tiny_config["output"], "keep_checkpoints": 3}}
    res = fedmtl.Experiment(cfg).run(progress=False)
    newest = list_checkpoints(res.run_dir)[0]
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    more = {**cfg, "server": {**cfg["server"], "rounds": 4}}
    resumed = fedmtl.Experiment(more).run(resume=res.run_dir, progress=False)
    assert resumed.summary["rounds_completed"] == 4
    assert "damaged" in caplog.text
    # rounds 3 and 4 were recomputed from round 2's checkpoint; the metrics log has no duplicates
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]


def test_existing_run_folder_is_not_overwritten(tiny_config):
    fedmtl.Experiment(tiny_config).run(progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        fedmtl.Experiment(tiny_config).run(progress=False)


def test_task_heterogeneous_clients_keep_unheld_heads(tiny_config):
    cfg = {**tiny_config}
    cfg["data"] = {**cfg["data"], "task_assignment": {"name": "explicit", "clients": {i: ["digit"] for i in range(10)}}}
    exp = fedmtl.Experiment(cfg)
    res = exp.run(progress=False)
    from fedmtl.fl.federation import initial_parameters
    from fedmtl.mtl import build_model

    init = initial_parameters(build_model(exp.config.model, exp.data.input_shape, exp.data.tasks), 0)
    heads_b = [n for n in init if n.startswith("heads.parity")]
    assert heads_b and all(torch.equal(init[n], res.params[n]) for n in heads_b)
    assert not torch.equal(init["heads.digit.0.weight"], res.params["heads.digit.0.weight"])


def test_fedbn_with_a_batch_norm_trunk_runs_and_resumes(tiny_config, tmp_path):
    """The experiment path: default engine (falls back from vectorised), evaluation with per-client statistics, resume."""
    cfg = {**tiny_config, "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [64], "norm": "batch"}}, "algorithm": {"name": "fedbn"}}
    full = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "bn-full"}}).run(progress=False)
    assert full.summary["final_personalized"]["digit"]["pooled"]["accuracy"] > 0.2
    assert full.summary["final_global"]["digit"]["accuracy"] >= 0
    part = {**cfg, "server": {**cfg["server"], "rounds": 2}, "output": {**cfg["output"], "name": "bn-part"}}
    first = fedmtl.Experiment(part).run(progress=False)
    resumed = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "bn-part"}}).run(resume=first.run_dir, progress=False)
    assert flatten(resumed.summary["final_personalized"]) == pytest.approx(flatten(full.summary["final_personalized"]))
