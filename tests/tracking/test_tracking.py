"""Tracking: a user's callback sees every round once; each backend logs offline what metrics.jsonl holds."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys

import pytest

import fedmtl
from fedmtl._extras import MissingExtraError
from fedmtl.config import ConfigError, config_from_dict
from fedmtl.tracking import Callback, Tracking, build_callbacks, scalars

BACKENDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def available(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[name]) is not None


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append(("start", run.name, run.rounds, run.config["server"]["rounds"]))

    def on_round(self, run, record):
        self.events.append(("round", record["round"]))

    def on_end(self, run):
        self.events.append(("end",))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("WANDB_MODE", "offline")  # never the network, whatever the machine's settings
    monkeypatch_module.setenv("WANDB_SILENT", "true")
    root = tmp_path_factory.mktemp("tracked")
    cfg = {
        "seed": 0,
        "data": {"source": {"name": "mnist1d", "num_samples": 600, "tasks": ["digit", "parity"]}, "num_clients": 4},
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16]}},
        "server": {"rounds": 3, "clients_per_round": 2},
        "evaluation": {"every": 2},
        "output": {"dir": str(root), "name": "t", "plots": False},
        "tracking": [{"name": n} for n in BACKENDS if available(n)],
    }
    recorder = Recorder()
    results = fedmtl.Experiment(cfg).add_callback(recorder).run(progress=False)
    return results, recorder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_a_callback_sees_each_round_once_between_start_and_end(tracked):
    _, recorder = tracked
    assert recorder.events == [("start", "t", 3, 3), ("round", 1), ("round", 2), ("round", 3), ("end",)]


def test_scalars_flatten_numbers_only():
    record = {"round": 2, "bytes_up": 10, "engine": "vectorized", "global": {"digit": {"accuracy": 0.5}}, "ok": True}
    assert scalars(record) == {"bytes_up": 10.0, "global/digit/accuracy": 0.5}


def test_tensorboard_holds_every_round_and_the_config(tracked):
    if not available("tensorboard"):
        pytest.skip("the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results, _ = tracked
    acc = EventAccumulator(str(results.run_dir / "tracking" / "tensorboard"))
    acc.Reload()
    up = [(e.step, e.value) for e in acc.Scalars("bytes_up")]
    assert up == [(r["round"], pytest.approx(r["bytes_up"])) for r in results.history]
    evaluated = [(r["round"], r["global"]["digit"]["accuracy"]) for r in results.history if "global" in r]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("global/digit/accuracy")] == evaluated
    assert "config" in str(acc.Tags())


def test_mlflow_store_in_the_run_folder_holds_metrics_params_and_config(tracked):
    if not available("mlflow"):
        pytest.skip("the mlflow extra is not installed")
    import mlflow

    results, _ = tracked
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(results.run_dir / 'tracking' / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedmtl").experiment_id])
    assert run.info.run_name == "t" and run.info.status == "FINISHED"
    assert run.data.params["server.rounds"] == "3"
    history = client.get_metric_history(run.info.run_id, "bytes_down")
    assert sorted((m.step, m.value) for m in history) == [(r["round"], r["bytes_down"]) for r in results.history]
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def wandb_history(path) -> list[dict[str, float]]:
    """The history rows of an offline ``.wandb`` file: LevelDB-log framing (32 KiB blocks, 7-byte record
    headers after a 7-byte file header) around wandb's protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, part, rows = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        part = data if kind in (1, 2) else part + data  # full / first, then middle / last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_holds_every_round(tracked):
    if not available("wandb"):
        pytest.skip("the wandb extra is not installed")
    results, _ = tracked
    (log,) = (results.run_dir / "tracking" / "wandb").glob("offline-run-*/*.wandb")  # what `wandb sync` uploads
    rows = wandb_history(log)
    assert [row["_step"] for row in rows] == [r["round"] for r in results.history]
    for row, record in zip(rows, results.history):
        assert row["bytes_up"] == record["bytes_up"]
        if "global" in record:
            assert row["global/parity/accuracy"] == pytest.approx(record["global"]["parity"]["accuracy"])


def test_a_missing_backend_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an absent package looks like to import
    with pytest.raises(MissingExtraError, match=r"pip install 'fedmtl\[mlflow\]'"):
        build_callbacks(config_from_dict({"tracking": [{"name": "mlflow"}]}).tracking)


def test_tracking_config_is_checked():
    with pytest.raises(ConfigError, match=r"tracking\.0: .*did you mean 'tensorboard'"):
        config_from_dict({"tracking": [{"name": "tensorbord"}]})
    assert config_from_dict({}).tracking == []


def test_an_early_stop_still_ends_the_callbacks(tmp_path):
    recorder = Recorder()
    tracking = Tracking([recorder])
    cfg = config_from_dict({"server": {"rounds": 5}})
    tracking.on_round(tmp_path / "r", cfg, {"round": 1})
    tracking.close()  # what the exit hook does when the loop stops before round 5
    tracking.close()
    assert recorder.events == [("start", "r", 5, 5), ("round", 1), ("end",)]
