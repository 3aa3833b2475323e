"""Engines execute a cohort's local training: sequential, vectorised, torch.distributed."""

from __future__ import annotations

from fedmtl.engine.base import CohortJob, Engine
from fedmtl.engine.sequential import SequentialEngine
from fedmtl.engine.vectorized import VectorizedEngine


def build_engine(cfg: object) -> Engine:
    """The engine an ``engine`` config describes."""
    from fedmtl.config import engine as ecfg

    if isinstance(cfg, ecfg.SequentialEngine):
        return SequentialEngine()
    if isinstance(cfg, ecfg.VectorizedEngine):
        return VectorizedEngine(chunk_clients=cfg.chunk_clients, memory_budget_mb=cfg.memory_budget_mb)
    if isinstance(cfg, ecfg.DistributedEngine):
        from fedmtl.engine.distributed import DistributedEngine

        return DistributedEngine(local=build_engine(cfg.local), backend=cfg.backend)
    raise TypeError(f"unknown engine config {cfg!r}")  # pragma: no cover


__all__ = ["CohortJob", "Engine", "SequentialEngine", "VectorizedEngine", "build_engine"]
