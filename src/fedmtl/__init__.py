"""fedmtl: federated multi-task learning on PyTorch.

``fedmtl.Experiment(config).run()`` runs a federated multi-task experiment from a configuration;
the sub-packages are usable on their own (``fedmtl.mtl`` is a multi-task learning library,
``fedmtl.comm`` a set of codecs, ``fedmtl.fl`` aggregation and server optimisers).

The names below and the sub-packages load on first use (PEP 562), so ``import fedmtl`` (and
``fedmtl --version``) stays light; ``fedmtl.Experiment`` brings in PyTorch and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedmtl._version import __version__ as __version__

#: public name -> the module that defines it
_EXPORTS = {
    "ConfigError": "fedmtl.config",
    "ExperimentConfig": "fedmtl.config",
    "load_config": "fedmtl.config",
    "DataError": "fedmtl.data",
    "from_arrays": "fedmtl.data",
    "from_datasets": "fedmtl.data",
    "Experiment": "fedmtl.experiment",
    "Results": "fedmtl.experiment",
    "render_report": "fedmtl.report",
    "register": "fedmtl.registry",
}
_SUBPACKAGES = (
    "atomic", "cli", "registry", "comm", "config", "data", "engine", "experiment", "fl", "integrations",
    "mtl", "privacy", "report", "tasks", "tracking", "tree",
)

__all__ = [
    "ConfigError", "DataError", "Experiment", "ExperimentConfig", "Results", "from_arrays", "from_datasets", "load_config",
    "register", "render_report",
]

if TYPE_CHECKING:
    from fedmtl.config import ConfigError, ExperimentConfig, load_config
    from fedmtl.data import DataError, from_arrays, from_datasets
    from fedmtl.experiment import Experiment, Results
    from fedmtl.registry import register
    from fedmtl.report import render_report


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"fedmtl.{name}")
    else:
        raise AttributeError(f"module 'fedmtl' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})
