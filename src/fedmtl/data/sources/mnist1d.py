"""MNIST-1D (Greydanus, 2020), generated offline by the ``mnist1d`` package."""

from __future__ import annotations

import numpy as np

from fedmtl._extras import require
from fedmtl.config.data import MNIST1DSource
from fedmtl.data.source import SourceData, digit_tasks


def load_mnist1d(cfg: MNIST1DSource, seed: int) -> SourceData:
    """Generate ``cfg.num_samples`` signals (40 features); the package's own split is the held-out set.

    Uses ``make_dataset`` with explicit arguments: ``get_dataset()`` would try the network first.
    """
    mnist1d = require("mnist1d.data", "mnist1d", "the mnist1d data source")

    args = mnist1d.get_dataset_args()
    args.num_samples = cfg.num_samples
    args.train_split = 1.0 - cfg.holdout_fraction
    args.seed = seed
    data = mnist1d.make_dataset(args)
    targets, tasks = digit_tasks(np.asarray(data["y"]), list(cfg.tasks))
    holdout, _ = digit_tasks(np.asarray(data["y_test"]), list(cfg.tasks))
    return SourceData(
        x=np.asarray(data["x"], dtype=np.float32),
        targets=targets,
        tasks=tasks,
        holdout_x=np.asarray(data["x_test"], dtype=np.float32),
        holdout_targets=holdout,
        description=f"MNIST-1D, {cfg.num_samples} signals of 40 samples",
    )
