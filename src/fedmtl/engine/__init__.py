"""Engines execute a cohort's local training: sequential, vectorised, torch.distributed."""

from __future__ import annotations

from fedmtl.engine.base import CohortJob, Engine
from fedmtl.engine.sequential import SequentialEngine


def build_engine(cfg: object) -> Engine:
    """The engine an ``engine`` config describes."""
    from fedmtl.config import engine as ecfg

    if isinstance(cfg, ecfg.SequentialEngine):
        return SequentialEngine()
    raise TypeError(f"unknown engine config {cfg!r}")  # pragma: no cover


__all__ = ["CohortJob", "Engine", "SequentialEngine", "build_engine"]
