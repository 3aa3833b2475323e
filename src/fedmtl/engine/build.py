"""Engines and round drivers from an experiment's configuration."""

from __future__ import annotations

from fedmtl.engine.base import Engine
from fedmtl.engine.device import rank_device, resolve_device
from fedmtl.engine.sequential import SequentialEngine
from fedmtl.engine.vectorized import VectorizedEngine


def build_engine(cfg: object, device: str = "cpu") -> Engine:
    """The engine an ``engine`` config describes, computing on ``device`` (``runtime.device``, resolved)."""
    from fedmtl.config import engine as ecfg

    if isinstance(cfg, ecfg.SequentialEngine):
        return SequentialEngine()
    if isinstance(cfg, ecfg.VectorizedEngine):
        return VectorizedEngine(chunk_clients=cfg.chunk_clients, memory_budget_mb=cfg.memory_budget_mb, device=device, one_step=cfg.one_step)
    if isinstance(cfg, ecfg.DistributedEngine):
        # on demand (and Streamed below): `-m fedmtl.engine.distributed` must find them unloaded
        from fedmtl.engine.distributed import DistributedEngine

        return DistributedEngine(local=build_engine(cfg.local, device), backend=cfg.backend)
    raise TypeError(f"unknown engine config {cfg!r}")  # pragma: no cover


def make_federation(cfg, data, model, device: str | None = None):  # type: ignore[no-untyped-def]
    """The federation an experiment should use for ``cfg.engine`` (what the integrator wires): a
    :class:`~fedmtl.fl.federation.Federation` whose default transport is the streamed reduction
    (:class:`~fedmtl.engine.reducing.Streamed`: the plain round's steps, streamed in chunks; bounded memory;
    stacked reduction with the vectorised engine).

    * ``vectorized`` / ``sequential``: the clients train here on that engine.
    * ``distributed``: joins torchrun's process group; each rank trains its slice of the cohort, with one
      all-reduce per round (all-gather for rounds that are not reduced), on its own device
      (:func:`~fedmtl.engine.device.rank_device`: ``device`` is not used there).
    """
    from functools import partial

    from fedmtl.config import engine as ecfg
    from fedmtl.engine.reducing import Streamed
    from fedmtl.fl.federation import Federation

    if isinstance(cfg.engine, ecfg.DistributedEngine):
        from fedmtl.engine.distributed import init_distributed

        _, world = init_distributed(cfg.engine.backend)
        engine = build_engine(cfg.engine.local, str(rank_device(cfg.runtime.device)))
        return Federation(cfg, data, model, engine, transport=partial(Streamed, distributed=world > 1))
    device = device or str(resolve_device(cfg.runtime.device))  # the caller may have resolved it already
    return Federation(cfg, data, model, build_engine(cfg.engine, device), transport=Streamed)
