"""The streamed reduction is a transport of the one round driver (issue 16): it plans, trains and reduces the
cohort chunk by chunk, the driver takes the plain round's server step from the sums, and every round it cannot
reduce goes through the driver's plan / deliver / collect / apply unchanged."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from _helpers import max_diff, setup

from fedmtl.engine import SequentialEngine, VectorizedEngine
from fedmtl.engine.reducing import Streamed
from fedmtl.fl.federation import Federation
from fedmtl.fl.transport import InProcess, TooFewUpdates
from fedmtl.mtl import build_model


def _fed(overrides: list[str], engine, chunk_clients: int = 1024) -> Federation:  # noqa: ANN001
    cfg, data = setup(overrides)
    model = build_model(cfg.model, data.input_shape, data.tasks)
    return Federation(cfg, data, model, engine, transport=partial(Streamed, chunk_clients=chunk_clients))


@pytest.mark.parametrize("engine", [SequentialEngine, VectorizedEngine], ids=["unstacked", "stacked"])
def test_each_chunk_is_planned_on_its_own_and_the_round_matches_the_plain_one(engine) -> None:  # noqa: ANN001
    fed = _fed([], engine(), chunk_clients=4)
    planned: list[int] = []
    real_plan = fed.plan
    fed.plan = lambda state, cohort=None: planned.append(len(cohort)) or real_plan(state, cohort)  # type: ignore[method-assign]
    state = fed.init_state()
    streamed, rs = fed.round(state)
    assert planned == [4, 2]  # 6 clients in chunks of 4: never a whole-cohort plan
    plain, rp = fed.round(state, InProcess(fed))
    assert planned[2:] == [6]  # the plain round plans the cohort whole
    assert max_diff(streamed.params, plain.params) < 1e-5
    assert (rs.cohort, rs.updates, rs.bytes_down, rs.bytes_up) == (rp.cohort, rp.updates, rp.bytes_down, rp.bytes_up)
    assert streamed.client_states.keys() == plain.client_states.keys() == set(rs.cohort)


def test_a_round_it_cannot_reduce_is_the_plain_round_bit_for_bit() -> None:
    fed = _fed(["server.aggregator.name=median"], SequentialEngine())  # the median needs every update at once
    state = fed.init_state()
    assert isinstance(fed.transport, Streamed) and fed.transport.reduce(state, fed.cohort(0)) is None
    a, rep_a = fed.round(state)
    b, rep_b = fed.round(state, InProcess(fed))
    assert max_diff(a.params, b.params) == 0.0 and rep_a.bytes_up == rep_b.bytes_up


def test_a_chosen_cohort_is_the_one_reduced() -> None:
    fed = _fed([], VectorizedEngine())
    after, report = fed.round(fed.init_state(), cohort=[7, 2])
    assert report.cohort == [7, 2] and report.updates == 2 and set(after.client_states) == {2, 7}


def test_a_quorum_not_met_by_the_reduced_updates_applies_nothing() -> None:
    fed = _fed(["client.optimizer.lr=1e38", "client.epochs=3"], VectorizedEngine())  # updates overflow: dropped
    state = fed.init_state()
    _, report = fed.round(state)
    assert report.dropped and report.updates == len(report.cohort) - len(report.dropped)
    with pytest.raises(TooFewUpdates) as err:
        fed.round(state, min_updates=report.updates + 1)
    assert err.value.updates == report.updates and err.value.dropped.keys() == report.dropped.keys()
    assert all(torch.equal(state.params[n], fed.init_state().params[n]) for n in state.params)
