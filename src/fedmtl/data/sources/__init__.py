"""Offline data sources, each returning :class:`~fedmtl.data.source.SourceData`."""

from __future__ import annotations

from fedmtl.config import data as dcfg
from fedmtl.data.source import DataError, SourceData
from fedmtl.data.sources.digits import load_digits_source
from fedmtl.data.sources.fashion_mnist import load_fashion_mnist
from fedmtl.data.sources.mnist1d import load_mnist1d
from fedmtl.data.sources.star import load_star
from fedmtl.data.sources.table import from_arrays, load_table
from fedmtl.data.sources.torch_dataset import from_datasets

LOADERS = {
    dcfg.MNIST1DSource: load_mnist1d,
    dcfg.DigitsSource: load_digits_source,
    dcfg.FashionMNISTSource: load_fashion_mnist,
    dcfg.StarSource: load_star,
    dcfg.TableSource: load_table,
}


def load_source(cfg: dcfg.Source, seed: int) -> SourceData:
    """Load the configured source (offline)."""
    if isinstance(cfg, dcfg.ArraysSource):
        raise DataError(
            "data.source 'arrays' means in-memory data: pass it as Experiment(config, source=fedmtl.from_arrays(...)) or source=fedmtl.from_datasets(...)"
        )
    return LOADERS[type(cfg)](cfg, seed)  # type: ignore[operator]


__all__ = ["from_arrays", "from_datasets", "load_source"]
