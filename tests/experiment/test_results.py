"""Results: the table view of the history, the final model ready to predict, overwriting a named run."""

from __future__ import annotations

import math

import pytest
import torch

import fedmtl
from fedmtl.config import ConfigError


@pytest.fixture
def finished(tiny_config):
    cfg = {**tiny_config, "evaluation": {"every": 2}}
    return fedmtl.Experiment(cfg).run(progress=False)


def test_to_pandas_has_a_row_per_round_and_a_column_per_metric(finished):
    pytest.importorskip("pandas")
    table = finished.to_pandas()
    assert list(table.index) == [1, 2, 3] and table.index.name == "round"
    for column in ("bytes_up", "bytes_down", "train_loss.digit", "global.digit.accuracy", "global.parity.loss", "personalized.digit.pooled.accuracy",
                   "personalized.parity.worst10.f1"):
        assert column in table.columns, column
    # evaluated every 2 rounds and at the last: round 1 has no global metrics
    assert math.isnan(table.loc[1, "global.digit.accuracy"])
    for record in finished.history:
        assert table.loc[record["round"], "bytes_up"] == record["bytes_up"]
        if "global" in record:
            assert table.loc[record["round"], "global.digit.accuracy"] == record["global"]["digit"]["accuracy"]


def test_model_predicts_what_the_run_evaluated(finished):
    model = finished.model()
    assert not model.training
    data = fedmtl.Experiment(finished.run_dir / "config.yaml").data
    x = data.holdout.x
    with torch.no_grad():
        out = model(x)
    for task in ("digit", "parity"):
        y = data.holdout.y[task]
        pred = out[task].argmax(-1) if task == "digit" else (out[task].reshape(-1) > 0).long()
        accuracy = (pred == y.reshape(-1)).float().mean().item()
        assert accuracy == pytest.approx(finished.summary["final_global"][task]["accuracy"], abs=1e-6)


def test_overwrite_starts_a_named_run_afresh_and_keeps_the_users_files(tiny_config):
    first = fedmtl.Experiment(tiny_config).run(progress=False)
    (first.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="output.overwrite=true"):
        fedmtl.Experiment(tiny_config).run(progress=False)
    cfg = {**tiny_config, "server": {**tiny_config["server"], "rounds": 2}, "output": {**tiny_config["output"], "overwrite": True}}
    second = fedmtl.Experiment(cfg).run(progress=False)
    assert second.run_dir == first.run_dir
    assert [r["round"] for r in second.history] == [1, 2]
    assert (second.run_dir / "notes.txt").read_text() == "mine"


class TwoHeads(torch.nn.Module):
    """A user's own model given as a Python object (not in the config)."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict({"digit": torch.nn.Linear(8, 10), "parity": torch.nn.Linear(8, 1)})

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.trunk(x)
        return {task: head(z) for task, head in self.heads.items()}


def test_model_of_a_run_given_a_model_object(tiny_config):
    experiment = fedmtl.Experiment(tiny_config, model=TwoHeads())
    finished = experiment.run(progress=False)
    model = finished.model(experiment)
    for name, value in model.named_parameters():
        assert torch.equal(value, finished.params[name]), name
    with torch.no_grad():
        out = model(experiment.data.holdout.x)
    accuracy = (out["digit"].argmax(-1) == experiment.data.holdout.y["digit"]).float().mean().item()
    assert accuracy == pytest.approx(finished.summary["final_global"]["digit"]["accuracy"], abs=1e-6)
