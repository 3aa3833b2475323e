"""Engines declare what they can run (``supports``), and the streamed round is a driver over a Federation
(composition: it is not one), whose interface it passes through unchanged (issue 16, item 2)."""

from __future__ import annotations

import torch
from _helpers import setup

from fedmtl.engine import SequentialEngine, VectorizedEngine
from fedmtl.engine.distributed import DistributedEngine
from fedmtl.engine.reducing import ReducingFederation
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


def test_the_streamed_round_is_a_driver_over_a_federation_not_one():
    assert not issubclass(ReducingFederation, Federation)
    cfg, data = setup()
    fed = ReducingFederation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), SequentialEngine(), chunk_clients=3)
    assert isinstance(fed.federation, Federation)
    assert fed.engine is fed.federation.engine and fed.cohort(0) == fed.federation.cohort(0)  # reads pass through
    other = SequentialEngine()
    fed.engine = other  # writes reach the federation, whose steps the driver runs
    assert fed.federation.engine is other and "engine" not in vars(fed)
    state = fed.init_state()
    new, report = fed.round(state)
    assert new.round == 1 and report.cohort == fed.federation.cohort(0)
