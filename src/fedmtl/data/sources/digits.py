"""scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import numpy as np

from fedmtl._extras import require
from fedmtl.config.data import DigitsSource
from fedmtl.data.source import SourceData, digit_tasks


def load_digits_source(cfg: DigitsSource, seed: int) -> SourceData:
    """1,797 images as 64 features (pixel intensities 0-16)."""
    datasets = require("sklearn.datasets", "sklearn", "the digits data source")

    bunch = datasets.load_digits()
    targets, tasks = digit_tasks(np.asarray(bunch.target), list(cfg.tasks))
    return SourceData(
        x=np.asarray(bunch.data, dtype=np.float32),
        targets=targets,
        tasks=tasks,
        description="scikit-learn digits, 1797 8x8 images",
    )
