"""The ``torchrun`` entry point: ``torchrun ... -m fedmtl.engine.distributed --config exp.yaml`` runs :func:`main`
(also ``-m fedmtl.engine.torchrun`` and ``-m fedmtl.runloop.torchrun``).

Every rank builds the same data and model and runs the rounds under the one run loop
(:func:`~fedmtl.runloop.loop.run_rounds`: resume, evaluation, metrics, checkpoints, summary), rank 0 alone
writing the run folder when ``--out`` names one; see :mod:`fedmtl.engine.distributed`. It lives here, above
the engines, because it wires the run loop to them.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from fedmtl.engine.build import build_engine
from fedmtl.engine.device import rank_device
from fedmtl.engine.distributed import DistributedEngine, init_distributed
from fedmtl.engine.reducing import Streamed
from fedmtl.fl.federation import Federation
from fedmtl.runloop.loop import RunOutcome, run_rounds
from fedmtl.runloop.progress import LogLines
from fedmtl.runloop.simulation import Simulation

log = logging.getLogger("fedmtl")


def main(argv: list[str] | None = None) -> RunOutcome:
    """``torchrun ... -m fedmtl.engine.distributed --config exp.yaml [--set k=v ...] [--rounds N] [--out DIR [--resume]]``."""
    from fedmtl.config import load_config
    from fedmtl.data.build import build_federated_data
    from fedmtl.mtl import build_model

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--rounds", type=int, default=None, help="server.rounds (the config's by default)")
    p.add_argument("--save", default=None, help="rank 0 writes the final global parameters here (torch.save)")
    p.add_argument("--out", default=None, help="the run folder rank 0 writes (metrics.jsonl, checkpoints, summary.json); none by default")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument(
        "--aggregate",
        choices=["reduce", "gather"],
        default="reduce",
        help="reduce: all-reduce of weighted sums (weighted mean); gather: all-gather results into the plain round",
    )
    args = p.parse_args(argv)
    if args.resume and args.out is None:
        p.error("--resume needs --out (the run folder to continue)")
    rounds = [] if args.rounds is None else [f"server.rounds={args.rounds}"]
    cfg = load_config(args.config, [*args.overrides, *rounds])
    engine_cfg = cfg.engine
    backend = getattr(engine_cfg, "backend", "auto")
    rank, world = init_distributed(backend)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    local_cfg = getattr(engine_cfg, "local", engine_cfg)
    data = build_federated_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    local_engine = build_engine(local_cfg, str(rank_device(cfg.runtime.device)))  # this rank's own GPU, or the CPU
    if args.aggregate == "gather":
        fed = Federation(cfg, data, model, DistributedEngine(local_engine, backend))
    else:
        fed = Federation(cfg, data, model, local_engine, transport=partial(Streamed, distributed=world > 1))
    log.info("engine: distributed (%d ranks, backend %s, local engine %s)", world, dist.get_backend() if world > 1 else "-", local_cfg.name)
    with tempfile.TemporaryDirectory() as scratch:  # without --out nothing is written: the loop reads an empty folder
        out = Path(args.out) if args.out is not None else Path(scratch)
        outcome = run_rounds(
            Simulation(fed),
            cfg,
            out,
            resume=args.resume,
            writes=rank == 0 and args.out is not None,
            progress=LogLines() if rank == 0 else None,
        )
    if rank == 0 and args.save:
        torch.save(outcome.state.params, args.save)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return outcome


if __name__ == "__main__":
    main()
