"""Engines declare what they can run (``supports``), and the streamed round is a transport of the one round
driver, :meth:`Federation.round` (issue 16, items 1 and 2)."""

from __future__ import annotations

from functools import partial

import torch
from _helpers import setup

from fedmtl.engine import SequentialEngine, VectorizedEngine
from fedmtl.engine.distributed import DistributedEngine
from fedmtl.engine.reducing import Streamed
from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.client import LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.cohort import CohortJob
from fedmtl.fl.federation import Federation
from fedmtl.mtl import build_model


def _trainer_and_job(overrides: list[str] | None = None):  # noqa: ANN202
    cfg, data = setup(overrides)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    dp = cfg.privacy.dp_sgd
    trainer = LocalTrainer(model, cfg.client, cfg.mtl, dp)
    client = data.clients[0]
    job = CohortJob(dict(model.named_parameters()), client, ClientState(), torch.Generator().manual_seed(0))
    return trainer, job


def test_every_engine_supports_a_plain_cohort():
    trainer, job = _trainer_and_job()
    for engine in (SequentialEngine(), VectorizedEngine(), DistributedEngine(VectorizedEngine())):
        assert engine.supports(FedAvg(), trainer, job) is None, engine.name


def test_the_vectorised_engine_names_what_it_cannot_batch_and_the_distributed_one_passes_it_on():
    trainer, job = _trainer_and_job(["mtl.balancer.name=pcgrad", "mtl.gradients.source=representation"])
    reason = VectorizedEngine().supports(FedAvg(), trainer, job)
    assert reason is not None and "representation" in reason
    assert DistributedEngine(VectorizedEngine()).supports(FedAvg(), trainer, job) == reason
    assert SequentialEngine().supports(FedAvg(), trainer, job) is None  # the reference runs everything


def test_the_streamed_round_is_a_transport_of_the_one_round_driver():
    from fedmtl.fl.transport import Reducing

    cfg, data = setup()
    fed = Federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), SequentialEngine(), transport=partial(Streamed, chunk_clients=3))
    assert isinstance(fed.transport, Streamed) and isinstance(fed.transport, Reducing) and fed.transport.fed is fed
    other = SequentialEngine()
    fed.engine = other  # the transport runs the federation's engine and steps, whatever they are now
    state = fed.init_state()
    new, report = fed.round(state)
    assert new.round == 1 and report.cohort == fed.cohort(0) and report.updates == len(report.cohort)
    assert other.last_run == {"sequential": 3}  # the last chunk of 3 of the 6 clients ran on the new engine
