"""A client's uplink codec state (error-feedback residual) survives from one round to its next."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import config_from_dict
from fedmtl.data import build_federated_data
from fedmtl.engine import make_federation
from fedmtl.mtl import build_model


def federation(engine: str):
    cfg = config_from_dict(
        {
            "data": {"source": {"name": "digits"}, "num_clients": 4, "partition": {"name": "iid"}},
            "comm": {"uplink": [{"name": "topk", "fraction": 0.05}]},
            "engine": {"name": engine},
        }
    )
    data = build_federated_data(cfg.data, 0)
    return make_federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks))


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_residual_is_carried_and_used(engine):
    fed = federation(engine)
    s1, _ = fed.round(fed.init_state())
    residual = s1.client_states[0].codec["uplink"]
    assert residual, "top-k keeps an error-feedback residual"

    s2, _ = fed.round(s1)
    forgetful = type(s1)(s1.round, s1.params, s1.opt_state, {c: st.with_codec({}) for c, st in s1.client_states.items()})
    s2_without, _ = fed.round(forgetful)
    # the residual from round 1 is still there after round 2 (updated), and it changed what was sent
    assert "uplink" in s2.client_states[0].codec
    assert any(not torch.equal(s2.params[n], s2_without.params[n]) for n in s2.params)
