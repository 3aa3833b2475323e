"""The ``torchrun`` entry point: ``torchrun ... -m fedmtl.engine.distributed --config exp.yaml`` runs :func:`main`
(also ``-m fedmtl.engine.torchrun``). Every rank builds the same data and model and runs the rounds;
see :mod:`fedmtl.engine.distributed`."""

from __future__ import annotations

import argparse
import logging
from functools import partial

import torch
import torch.distributed as dist

from fedmtl.engine.build import build_engine
from fedmtl.engine.distributed import DistributedEngine, init_distributed
from fedmtl.engine.reducing import Streamed
from fedmtl.fl.federation import Federation

log = logging.getLogger("fedmtl")


def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m fedmtl.engine.distributed --config exp.yaml [--set k=v ...] --rounds N``."""
    from fedmtl.config import load_config
    from fedmtl.data.build import build_federated_data
    from fedmtl.mtl import build_model

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--save", default=None, help="rank 0 writes the final global parameters here (torch.save)")
    p.add_argument(
        "--aggregate",
        choices=["reduce", "gather"],
        default="reduce",
        help="reduce: all-reduce of weighted sums (weighted mean); gather: all-gather results into the plain round",
    )
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    engine_cfg = cfg.engine
    backend = getattr(engine_cfg, "backend", "auto")
    rank, world = init_distributed(backend)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s"
    )
    local_cfg = getattr(engine_cfg, "local", engine_cfg)
    data = build_federated_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    local_engine = build_engine(local_cfg)
    if args.aggregate == "gather":
        fed = Federation(cfg, data, model, DistributedEngine(local_engine, backend))
    else:
        fed = Federation(cfg, data, model, local_engine, transport=partial(Streamed, distributed=world > 1))
    log.info(
        "engine: distributed (%d ranks, backend %s, local engine %s)",
        world,
        dist.get_backend() if world > 1 else "-",
        local_cfg.name,
    )
    state = fed.init_state()
    for _ in range(args.rounds or cfg.server.rounds):
        state, rep = fed.round(state)
        log.info(
            "round %d: %.3fs, train loss %s",
            rep.round,
            rep.seconds,
            {k: round(v, 4) for k, v in rep.train_loss.items()},
        )
    if rank == 0 and args.save:
        torch.save(state.params, args.save)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
