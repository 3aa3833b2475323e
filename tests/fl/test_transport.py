"""The one round driver, Federation.round, over transports: in process by default, anything that delivers."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import config_from_dict
from fedmtl.data import build_federated_data
from fedmtl.engine.sequential import SequentialEngine
from fedmtl.fl.federation import Federation
from fedmtl.fl.transport import Delivery, InProcess, TooFewUpdates
from fedmtl.mtl import build_model


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Federation:
    cfg = config_from_dict(
        {
            "seed": 3,
            "data": {
                "source": {"name": "mnist1d", "num_samples": 300, "tasks": ["digit", "parity"]},
                "num_clients": 5,
            },
            "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16]}},
            "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
            "server": {"rounds": 1, "clients_per_round": 4},
            "output": {"dir": str(tmp_path_factory.mktemp("runs"))},
        }
    )
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), SequentialEngine())


class LosesOne:
    """In process, but the first client of the cohort never answers."""

    def __init__(self, fed: Federation):
        self.inner = InProcess(fed)

    def deliver(self, state, plan):
        got = self.inner.deliver(state, plan)
        lost = plan.cohort[0]
        states = {c: s for c, s in got.client_states.items() if c != lost}
        if lost in state.client_states:
            states[lost] = state.client_states[lost]
        return Delivery([r for r in got.replies if r.client_id != lost], states, {lost: "no answer"})


def test_the_default_transport_is_the_in_process_one(fed):
    state = fed.init_state()
    a, rep_a = fed.round(state)
    b, rep_b = fed.round(state, InProcess(fed))
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])
    assert rep_a.bytes_up == rep_b.bytes_up and rep_a.updates == rep_b.updates == len(rep_a.cohort) == 4


def test_a_client_lost_in_transit_is_dropped_with_its_reason_and_the_round_goes_on(fed):
    state = fed.init_state()
    new, report = fed.round(state, LosesOne(fed))
    lost = report.cohort[0]
    assert report.dropped == {lost: "no answer"} and report.updates == 3
    assert new.round == 1 and lost not in new.client_states
    assert set(new.client_states) == set(report.cohort) - {lost}


def test_a_quorum_not_met_applies_nothing(fed):
    state = fed.init_state()
    before = {n: p.clone() for n, p in state.params.items()}
    with pytest.raises(TooFewUpdates) as caught:
        fed.round(state, LosesOne(fed), min_updates=4)
    assert caught.value.updates == 3 and list(caught.value.dropped.values()) == ["no answer"]
    assert state.round == 0 and all(torch.equal(before[n], state.params[n]) for n in before)
    _, report = fed.round(state, LosesOne(fed), min_updates=3)  # exactly enough
    assert report.updates == 3


def test_a_chosen_cohort_is_the_one_asked(fed):
    _, report = fed.round(fed.init_state(), cohort=[4, 1])
    assert report.cohort == [4, 1] and report.updates == 2
