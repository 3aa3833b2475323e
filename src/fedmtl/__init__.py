"""fedmtl: federated multi-task learning on PyTorch.

``fedmtl.Experiment(config).run()`` runs a federated multi-task experiment from a configuration;
the sub-packages are usable on their own (``fedmtl.mtl`` is a multi-task learning library,
``fedmtl.comm`` a set of codecs, ``fedmtl.fl`` aggregation and server optimisers).
"""

from fedmtl.config import ConfigError, ExperimentConfig, load_config
from fedmtl.data import DataError, from_arrays, from_datasets
from fedmtl.experiment import Experiment, Results, render_report

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "Experiment", "ExperimentConfig", "Results", "from_arrays", "from_datasets", "load_config", "render_report"]
