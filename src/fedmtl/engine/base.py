"""The engine protocol (defined in :mod:`fedmtl.fl.cohort`, which the round loop depends on)."""

from fedmtl.fl.cohort import CohortJob, Engine

__all__ = ["CohortJob", "Engine"]
