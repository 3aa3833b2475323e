"""One local step per client: the streamed round's sums from one shared reverse pass equal the clients' own steps.

The reference is the sequential engine under the plain round (each client trains its own copy, the server
averages the decoded updates) and the general stacked path (``one_step=False``): both must agree with the
one-step identity ``Σ_c w_c step(θ, g_c) = W·step(θ, Σ_c w_c g_c / W)`` within float rounding.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from _helpers import max_diff, run, setup

from fedmtl.engine import SequentialEngine, VectorizedEngine
from fedmtl.engine.one_step import OneStepResult
from fedmtl.engine.reducing import Streamed
from fedmtl.engine.stacked import StackedResult
from fedmtl.fl.federation import Federation

TOL = 1e-5
STREAMED = partial(Federation, transport=Streamed)  # the streamed round (make_federation's default)
ONE_BATCH = ["client.batch_size=512", "client.epochs=1"]  # every client's rows fit one batch: one step
HETEROGENEOUS = ["data.task_assignment.name=random_subset", "data.task_assignment.tasks_per_client=2", "data.source.tasks=[digit,parity,mod3]"]

CASES = {
    "plain sgd": [],
    "momentum+wd": ["client.optimizer.momentum=0.9", "client.optimizer.weight_decay=0.01"],
    "task-heterogeneous": HETEROGENEOUS,
    "static weights": HETEROGENEOUS + ["mtl.balancer.name=static", "mtl.balancer.weights={digit: 0.3, parity: 2.0}"],
    # a penalty over every task's copy of the trunk: a client's step moves only the copies it holds
    "soft sharing (penalty)": HETEROGENEOUS + ["model.name=soft_sharing", "client.optimizer.momentum=0.5"],
    # PLE's shared gate mixes every task's experts: a client that lacks a task still gets a gradient on that
    # task's experts, which its own step must not apply
    "ple (task experts feed shared)": HETEROGENEOUS + ["model.name=ple"],
}


def _chunk_result(cfg, data, engine: VectorizedEngine):  # noqa: ANN001, ANN202
    """The engine's reduced result for the first round's cohort, and the federation that made it."""
    from fedmtl.fl.cohort import CohortJob
    from fedmtl.fl.seeding import generator
    from fedmtl.mtl import build_model

    fed = STREAMED(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), engine)
    state = fed.init_state()
    cohort = fed.cohort(0)
    jobs = [CohortJob(dict(state.params), data.clients[c], state.client_state(c), generator(cfg.seed, "client", 0, c)) for c in cohort]
    return engine.run_stacked(fed.algorithm, fed.trainer, jobs), fed


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_round_matches_the_clients_own_steps(case: str) -> None:
    cfg, data = setup(ONE_BATCH + CASES[case])
    result, fed = _chunk_result(cfg, data, VectorizedEngine())
    assert isinstance(result, OneStepResult) and fed.transport._stacked_path(fed.engine)  # the identity is what runs
    one, one_reports = run(cfg, data, VectorizedEngine(), rounds=2, federation_cls=STREAMED)
    general, _ = run(cfg, data, VectorizedEngine(one_step=False), rounds=2, federation_cls=STREAMED)
    sequential, seq_reports = run(cfg, data, SequentialEngine(), rounds=2, federation_cls=Federation)
    assert max_diff(one.params, general.params) < TOL
    assert max_diff(one.params, sequential.params) < TOL
    for a, b in zip(one_reports, seq_reports):  # the same training losses and bytes are reported
        assert a.train_loss.keys() == b.train_loss.keys()
        assert all(abs(a.train_loss[t] - b.train_loss[t]) < 1e-4 for t in a.train_loss)
        assert (a.bytes_up, a.bytes_down, a.updates) == (b.bytes_up, b.bytes_down, b.updates)
    # the objective states count the one step, as the clients' own training counts it
    for cid, s in sequential.client_states.items():
        assert int(one.client_states[cid].objective["step"]) == int(s.objective["step"])


def test_one_step_applies_only_where_the_identity_is_exact() -> None:
    cfg, data = setup(ONE_BATCH)
    result, _ = _chunk_result(cfg, data, VectorizedEngine())
    assert isinstance(result, OneStepResult)
    for extra in (
        ["client.optimizer.name=adam", "client.optimizer.lr=0.01"],  # Adam's first step is not affine in g
        ["client.max_grad_norm=0.3"],  # clipping is not linear
        ["client.epochs=2"],  # two steps: the second gradient depends on the client's own first step
        ["mtl.balancer.name=pcgrad"],  # a balancer decides per client
        ["mtl.balancer.name=dwa"],  # loss-based weights are per client
    ):
        cfg, data = setup(ONE_BATCH + extra)
        result, _ = _chunk_result(cfg, data, VectorizedEngine())
        assert isinstance(result, StackedResult), extra
    cfg, data = setup(ONE_BATCH)
    result, _ = _chunk_result(cfg, data, VectorizedEngine(one_step=False))
    assert isinstance(result, StackedResult)


def test_a_model_with_local_parameters_takes_the_general_path() -> None:
    """Local (personal) parameters stay with each client, trained: a sum cannot give them back."""
    from fedmtl.engine.one_step import one_step_applies
    from fedmtl.engine.stacked import TrainRequest, draw_plan
    from fedmtl.fl.client_state import ClientState
    from fedmtl.fl.seeding import generator
    from fedmtl.mtl import LOCAL, build_model, build_objective

    cfg, data = setup(ONE_BATCH)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    params = {n: p.detach() for n, p in model.named_parameters()}
    clients = data.clients[:3]
    requests = [TrainRequest(params, c, ClientState(), generator(0, "client", 0, c.client_id)) for c in clients]
    plans = [draw_plan(r, cfg.client.batch_size, cfg.client.epochs, False) for r in requests]
    objectives = [build_objective(cfg.mtl, c.tasks) for c in clients]
    assert one_step_applies(model, cfg.client, requests, plans, objectives)
    shared_group = model.group_of
    model.group_of = lambda n: LOCAL if n.startswith("heads.") else shared_group(n)  # type: ignore[method-assign]
    assert not one_step_applies(model, cfg.client, requests, plans, objectives)


def test_weighted_sum_equals_the_stacked_clients_sum_for_any_weights() -> None:
    """Hand-check of the identity on arbitrary weights (not only the round's): one-step vs the stacked clients."""
    cfg, data = setup(ONE_BATCH + HETEROGENEOUS + ["client.optimizer.momentum=0.9", "client.optimizer.weight_decay=0.05"])
    one, fed = _chunk_result(cfg, data, VectorizedEngine())
    stacked, _ = _chunk_result(cfg, data, VectorizedEngine(one_step=False))
    assert isinstance(one, OneStepResult) and isinstance(stacked, StackedResult)
    C = len(stacked.steps)
    w = torch.linspace(0.5, 3.0, C)
    for name in stacked.params:
        want = w @ stacked.params[name].reshape(C, -1)
        assert float((one.weighted_sum(name, w) - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))
    assert torch.allclose(one.loss_mean, stacked.loss_mean, atol=1e-6)


def test_a_non_finite_client_is_found_and_dropped_as_on_the_general_path() -> None:
    cfg, data = setup(ONE_BATCH + ["client.optimizer.lr=1e38"])
    one, one_reports = run(cfg, data, VectorizedEngine(), rounds=1, federation_cls=STREAMED)
    general, general_reports = run(cfg, data, VectorizedEngine(one_step=False), rounds=1, federation_cls=STREAMED)
    assert one_reports[0].dropped == general_reports[0].dropped
    assert max_diff(one.params, general.params) == 0.0


def test_the_config_key_turns_the_identity_off() -> None:
    from fedmtl.config import load_config
    from fedmtl.engine import build_engine

    assert build_engine(load_config(None, ["engine.name=vectorized"]).engine).one_step is True
    assert build_engine(load_config(None, ["engine.name=vectorized", "engine.one_step=false"]).engine).one_step is False
