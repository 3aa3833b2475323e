"""A user's own data, end to end: natural clients, a classification and a regression task."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import fedmtl


def synthetic_hospitals(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    site = rng.choice(["north", "south", "east", "west", "central", "harbour"], n)
    risk = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "high", "low")
    cost = 3.0 * x[:, 2] - 2.0 * x[:, 3] + rng.normal(0, 0.3, n) + 100.0
    x[rng.random(n) < 0.02, 4] = np.nan  # a few missing values, cleaned on the clients
    return x, risk, cost, site


def test_own_arrays_with_natural_clients_learn_both_tasks(tmp_path, caplog):
    x, risk, cost, site = synthetic_hospitals()
    source = fedmtl.from_arrays(x, {"risk": risk, "cost": cost}, {"risk": "binary", "cost": "regression"}, client_ids=site)
    cfg = {
        "data": {"source": {"name": "arrays"}, "partition": {"name": "natural"}, "preprocessing": {"missing": "impute_mean"}},
        "model": {"trunk": {"hidden": [32]}},
        "client": {"epochs": 3, "optimizer": {"lr": 0.05}},
        "server": {"rounds": 10},
        "output": {"dir": str(tmp_path), "name": "own", "plots": False},
    }
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        res = fedmtl.Experiment(cfg, source=source).run(progress=False)
    assert res.summary["data"]["clients"] == 6
    # cleaning is counted, in summary.json and the log: every row with a NaN feature was imputed, none dropped
    cleaning = json.loads((res.run_dir / "summary.json").read_text())["data_cleaning"]
    nan_rows = int(np.isnan(x).any(axis=1).sum())
    assert nan_rows > 10
    assert cleaning["clients"]["imputed_rows"] + cleaning["holdout"]["imputed_rows"] == nan_rows
    assert cleaning["clients"]["rows"] + cleaning["holdout"]["rows"] == len(x)
    assert cleaning["clients"]["dropped_feature"] == cleaning["holdout"]["dropped_feature"] == 0
    assert cleaning["small_clients"] == {"min_rows": 2, "action": "drop", "clients": [], "rows": 0, "merged_into": None}
    assert f"{cleaning['clients']['imputed_rows']} imputed" in caplog.text
    assert res.summary["final_global"]["risk"]["accuracy"] > 0.85
    assert res.summary["final_global"]["cost"]["r2"] > 0.8


def test_own_csv_file_via_the_cli(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from fedmtl.cli import app

    x, risk, cost, site = synthetic_hospitals(600)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]).assign(risk=risk, cost=cost, site=site)
    path = tmp_path / "hospitals.csv"
    frame.to_csv(path, index=False)
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"""
data:
  source: {{name: table, path: {path}, client_column: site, tasks: [{{name: risk, kind: binary}}, {{name: cost, kind: regression}}]}}
  partition: {{name: natural}}
server: {{rounds: 2}}
output: {{dir: {tmp_path / 'runs'}, name: csv, plots: false}}
"""
    )
    result = CliRunner().invoke(app, ["run", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "csv" / "summary.json").exists()


def test_real_fashion_mnist_when_installed(tmp_path):
    from fedmtl.data.sources.fashion_mnist import DataError, find_fashion_mnist

    try:
        find_fashion_mnist(None)
    except DataError:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cfg = {
        "data": {"source": {"name": "fashion_mnist", "max_train": 1500, "max_test": 300}, "num_clients": 10},
        "model": {"trunk": {"name": "mlp", "hidden": [64]}},
        "server": {"rounds": 3},
        "output": {"dir": str(tmp_path), "name": "fm", "plots": False},
    }
    res = fedmtl.Experiment(cfg).run(progress=False)
    assert res.summary["data"]["input_shape"] == [28, 28]
    assert res.summary["final_global"]["group"]["accuracy"] > 0.6  # 3 classes
