"""Engines execute a cohort's local training: sequential, vectorised, torch.distributed."""

from __future__ import annotations

from fedmtl.engine.base import CohortJob, Engine
from fedmtl.engine.build import build_engine, make_federation
from fedmtl.engine.sequential import SequentialEngine
from fedmtl.engine.vectorized import VectorizedEngine

__all__ = ["CohortJob", "Engine", "SequentialEngine", "VectorizedEngine", "build_engine", "make_federation"]
