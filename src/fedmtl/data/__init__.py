"""Offline data sources, partitioners, task assignment and client-side preprocessing."""

from fedmtl.data.build import build_federated_data
from fedmtl.data.dataset import ClientData, FederatedData, Split
from fedmtl.data.preprocessing import Moments
from fedmtl.data.source import DataError, SourceData
from fedmtl.data.sources import from_arrays, from_datasets, load_source

__all__ = [
    "ClientData",
    "DataError",
    "FederatedData",
    "Moments",
    "SourceData",
    "Split",
    "build_federated_data",
    "from_arrays",
    "from_datasets",
    "load_source",
]
