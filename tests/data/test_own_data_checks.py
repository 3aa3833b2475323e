"""The own-data path's checks: cleaning counted per reason, categorical NaN, implausible class counts,
unknown kinds, label leaks, ignored client ids and the minimum client size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fedmtl.config import ConfigError, config_from_dict
from fedmtl.data import DataError, build_federated_data, from_arrays, load_source
from fedmtl.data.sources.table import MAX_INFERRED_CLASSES, encode_target


def arrays_cfg(**data):
    base = {"source": {"name": "arrays", "holdout_fraction": 0.0}, "num_clients": 4, "partition": {"name": "iid"}}
    base.update(data)
    return config_from_dict({"data": base}).data


def dirty_arrays(n=40):
    """Rows 0-2 have no label, row 3 an infinite regression target, rows 4-7 one NaN feature each, row 8 two."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    v = x[:, 1].astype(np.float64)
    y[:3], v[:3] = np.nan, np.nan
    v[3] = np.inf
    x[4:8, 2] = np.nan
    x[8, :2] = np.nan
    return x, {"y": y, "v": v}, {"y": "binary", "v": "regression"}


def test_cleaning_report_counts_each_reason():
    x, targets, kinds = dirty_arrays()
    fed = build_federated_data(arrays_cfg(), seed=0, source=from_arrays(x, targets, kinds))
    c = fed.cleaning.clients
    assert (c.rows, c.dropped_no_label, c.dropped_invalid_label, c.dropped_feature, c.imputed_rows) == (40, 3, 1, 5, 0)
    assert c.kept == 31 == sum(len(k.train) + len(k.test) for k in fed.clients)
    assert sum(k.cleaning["dropped_feature"] for k in fed.clients) == 5  # per client, adding up to the report
    assert "3 no label, 1 invalid label, 5 missing feature" in fed.cleaning.describe()

    fed = build_federated_data(arrays_cfg(preprocessing={"missing": "impute_mean"}), seed=0, source=from_arrays(x, targets, kinds))
    c = fed.cleaning.clients
    assert (c.dropped_feature, c.imputed_rows, c.imputed_values, c.kept) == (0, 5, 6, 36)


def test_holdout_cleaning_is_counted_apart():
    x, targets, kinds = dirty_arrays()
    cfg = arrays_cfg(source={"name": "arrays", "holdout_fraction": 0.25})
    fed = build_federated_data(cfg, seed=0, source=from_arrays(x, targets, kinds))
    both = fed.cleaning.clients + fed.cleaning.holdout
    assert fed.cleaning.holdout.rows == 10
    assert (both.rows, both.dropped_no_label, both.dropped_invalid_label, both.dropped_feature) == (40, 3, 1, 5)
    assert fed.cleaning.holdout.kept == len(fed.holdout)


def test_cleaning_is_logged(caplog):
    x, targets, kinds = dirty_arrays()
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        build_federated_data(arrays_cfg(), seed=0, source=from_arrays(x, targets, kinds))
    assert "data cleaning: clients 40 rows: 9 dropped (3 no label, 1 invalid label, 5 missing feature)" in caplog.text


def categorical_table(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "colour": ["red", "blue", None, "red", "red", "", "blue", "red"],  # '' is an empty CSV cell: NaN
            "y": [0, 1, 0, 1, 0, 1, 0, 1],
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return path


def table_cfg(path, **data):
    base = {
        "source": {"name": "table", "path": str(path), "tasks": [{"name": "y", "kind": "binary"}], "holdout_fraction": 0.0},
        "num_clients": 1,
        "partition": {"name": "iid"},
        "test_fraction": 0.0,
        "preprocessing": {"normalize": "none"},
        "small_clients": {"min_rows": 1},
    }
    base.update(data)
    return config_from_dict({"data": base}).data


def test_nan_in_a_categorical_column_is_missing(tmp_path):
    path = categorical_table(tmp_path)
    src = load_source(table_cfg(path).source, seed=0)
    # columns: a, then colour one-hot in sorted order (blue, red); rows 2 and 5 have no colour
    assert np.isnan(src.x[[2, 5], 1:]).all() and not np.isnan(src.x[:, 0]).any()
    assert src.x[[0, 1], 1:].tolist() == [[0.0, 1.0], [1.0, 0.0]]

    fed = build_federated_data(table_cfg(path), seed=0)
    assert fed.cleaning.clients.dropped_feature == 2 and len(fed.clients[0].train) == 6

    fed = build_federated_data(table_cfg(path, preprocessing={"normalize": "none", "missing": "impute_mean"}), seed=0)
    x = fed.clients[0].train.x
    order = torch.argsort(x[:, 0])  # rows shuffled by the local split; column a identifies them
    # the imputed one-hot is the observed colours' frequencies: 2 blue, 4 red of 6
    torch.testing.assert_close(x[order][[2, 5], 1:], torch.tensor([[1 / 3, 2 / 3], [1 / 3, 2 / 3]]))
    assert (fed.cleaning.clients.imputed_rows, fed.cleaning.clients.imputed_values) == (2, 4)


def test_multiclass_with_too_many_values_is_refused_with_advice():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=r"task 'price' is multiclass but has 300 distinct labels .*looks continuous \(fractional values\), use kind regression"):
        encode_target("price", "multiclass", rng.normal(size=300))
    many = np.arange(MAX_INFERRED_CLASSES + 1)
    with pytest.raises(DataError, match="101 distinct labels.*use kind regression.*set its num_classes"):
        encode_target("age", "multiclass", many)
    _, task = encode_target("age", "multiclass", many, num_classes=128)  # declared: accepted
    assert task.num_classes == 128
    _, task = encode_target("age", "multiclass", np.arange(MAX_INFERRED_CLASSES))
    assert task.num_classes == MAX_INFERRED_CLASSES
    with pytest.raises(DataError, match="declares num_classes=3 but has 5 distinct labels"):
        encode_target("grade", "multiclass", np.arange(5), num_classes=3)
    words = np.array([f"w{i}" for i in range(150)])
    with pytest.raises(DataError, match="150 distinct labels") as err:
        encode_target("word", "multiclass", words)
    assert "continuous" not in str(err.value)  # strings are not numbers: only the num_classes advice


def test_from_arrays_refuses_unknown_kinds():
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(DataError, match=r"unknown task kind\(s\) \{'a': 'ordinal'\}; allowed: multiclass, binary, regression"):
        from_arrays(x, {"a": np.array([0, 1, 2, 1])}, {"a": "ordinal"})
    with pytest.raises(DataError, match="kind 'count' is not one of"):
        encode_target("a", "count", np.array([0, 1]))


def test_a_task_column_among_the_features_is_refused():
    source = {"name": "table", "path": "d.csv", "tasks": [{"name": "risk", "kind": "binary", "column": "risk_flag"}]}
    with pytest.raises(ConfigError, match=r"target column\(s\) \['risk_flag'\] of task\(s\) \['risk'\].*leaks"):
        config_from_dict({"data": {"source": {**source, "features": ["age", "risk_flag"]}}})
    with pytest.raises(ConfigError, match="two tasks read the same target column"):
        config_from_dict({"data": {"source": {**source, "tasks": [*source["tasks"], {"name": "r2", "kind": "binary", "column": "risk_flag"}]}}})
    with pytest.raises(ConfigError, match="client_column 'risk_flag' is also the target column"):
        config_from_dict({"data": {"source": {**source, "client_column": "risk_flag"}}})
    config_from_dict({"data": {"source": {**source, "features": ["age", "risk"]}}})  # the task's name is not its column


def test_client_ids_with_a_non_natural_partition_warn(tmp_path, caplog):
    import pandas as pd

    rng = np.random.default_rng(0)
    path = tmp_path / "h.csv"
    pd.DataFrame({"a": rng.normal(size=60), "y": rng.integers(0, 2, 60), "site": rng.choice(["n", "s"], 60)}).to_csv(path, index=False)
    source = {"name": "table", "path": str(path), "tasks": [{"name": "y", "kind": "binary"}], "client_column": "site"}
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        fed = build_federated_data(config_from_dict({"data": {"source": source, "num_clients": 3, "partition": {"name": "iid"}}}).data, seed=0)
    assert fed.num_clients == 3  # the partition's clients: the ids are ignored ...
    assert "data.source.client_column 'site' ignored: data.partition is 'iid'" in caplog.text  # ... and it says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        fed = build_federated_data(config_from_dict({"data": {"source": source, "partition": {"name": "natural"}}}).data, seed=0)
    assert fed.num_clients == 2 and "ignored" not in caplog.text
    x = rng.normal(size=(60, 2)).astype(np.float32)
    src = from_arrays(x, {"y": x[:, 0] > 0}, {"y": "binary"}, client_ids=rng.choice(["n", "s"], 60))
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        build_federated_data(arrays_cfg(partition={"name": "dirichlet", "alpha": 1.0}), seed=0, source=src)
    assert "the source's client ids ignored: data.partition is 'dirichlet'" in caplog.text


def natural_sites(sizes, seed=0):
    """Natural clients 'site0', 'site1', ... of the given sizes; task y every row, task v half of them."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"site{i}" for i in range(len(sizes))], sizes)
    n = len(ids)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    return from_arrays(x, {"y": x[:, 0] > 0, "v": x[:, 1]}, {"y": "binary", "v": "regression"}, client_ids=ids)


def natural_cfg(**small):
    return arrays_cfg(partition={"name": "natural"}, small_clients=small)


@pytest.mark.parametrize("action", ["drop", "merge", "keep"])
def test_small_clients_are_reported_and_handled(action, caplog):
    src = natural_sites([30, 20, 1, 2])
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        fed = build_federated_data(natural_cfg(min_rows=3, action=action), seed=0, source=src)
    report = fed.cleaning.small_clients
    assert [(c.index, c.name, c.rows) for c in report.clients] == [(2, "site2", 1), (3, "site3", 2)]
    assert "2 client(s) below data.small_clients.min_rows=3 usable rows" in caplog.text and "2 (site2): 1" in caplog.text
    sizes = [len(c.train) + len(c.test) for c in fed.clients]
    assert sum(sizes) == (50 if action == "drop" else 53)
    assert sizes == {"drop": [30, 20], "merge": [30, 20, 3], "keep": [30, 20, 1, 2]}[action]
    assert report.merged_into == (2 if action == "merge" else None)


def test_merge_into_the_smallest_client_when_the_pool_is_too_small():
    fed = build_federated_data(natural_cfg(min_rows=5, action="merge"), seed=0, source=natural_sites([30, 20, 1, 2]))
    assert [len(c.train) + len(c.test) for c in fed.clients] == [30, 23]
    assert fed.cleaning.small_clients.merged_into == 1


def test_a_merged_client_keeps_only_the_labels_its_rows_client_held():
    src = natural_sites([30, 20, 2, 2])
    cfg = arrays_cfg(
        partition={"name": "natural"},
        small_clients={"min_rows": 3, "action": "merge"},
        task_assignment={"name": "explicit", "clients": {2: ["y"], 3: ["v"]}},
        test_fraction=0.0,
    )
    fed = build_federated_data(cfg, seed=0, source=src)
    merged = fed.clients[2]
    assert merged.tasks == ("y", "v") and len(merged.train) == 4
    assert int(torch.isnan(merged.train.y["y"]).sum()) == 2  # site3's rows: no y label (it held only v)
    assert int(torch.isnan(merged.train.y["v"]).sum()) == 2  # site2's rows: no v label


def test_small_client_errors_advise():
    with pytest.raises(DataError, match="every client has fewer than data.small_clients.min_rows=100.*action merge"):
        build_federated_data(natural_cfg(min_rows=100), seed=0, source=natural_sites([30, 20]))
    cfg = arrays_cfg(
        partition={"name": "natural"}, small_clients={"min_rows": 3}, task_assignment={"name": "explicit", "clients": {0: ["y"], 1: ["y"], 2: ["v"]}}
    )
    with pytest.raises(DataError, match=r"leaves task\(s\) \['v'\] with no client"):
        build_federated_data(cfg, seed=0, source=natural_sites([30, 20, 2]))
    with pytest.raises(ConfigError, match="min_rows: Input should be greater than 0"):
        natural_cfg(min_rows=0)
    with pytest.raises(ConfigError, match="'drop', 'merge' or 'keep'"):
        natural_cfg(action="shrink")


def test_usable_rows_count_only_labelled_complete_rows():
    x = np.zeros((12, 2), dtype=np.float32)
    y = np.ones(12, dtype=np.float32)
    y[::2] = 0
    x[6:9, 0] = np.nan  # client b: 3 of 6 rows with a missing feature
    src = from_arrays(x, {"y": y}, {"y": "binary"}, client_ids=np.repeat(["a", "b"], 6))
    fed = build_federated_data(natural_cfg(min_rows=4, action="keep"), seed=0, source=src)
    assert [(c.name, c.rows) for c in fed.cleaning.small_clients.clients] == [("b", 3)]
    cfg = arrays_cfg(partition={"name": "natural"}, small_clients={"min_rows": 4}, preprocessing={"missing": "impute_zero"})
    assert not build_federated_data(cfg, seed=0, source=src).cleaning.small_clients.clients  # imputed rows are usable
