"""Small federations with a simulated system, built the way Experiment builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _systems_helpers import small_config

from fedmtl.config import config_from_dict
from fedmtl.engine import make_federation
from fedmtl.experiment import Experiment
from fedmtl.fl.systems import Driver, build_systems


@pytest.fixture
def build(tmp_path: Any) -> Callable[..., tuple[Driver, Any]]:
    """``build(systems, **overrides) -> (driver, federation)``."""

    def make(systems: dict[str, Any], **over: Any) -> tuple[Driver, Any]:
        cfg = config_from_dict(small_config(tmp_path, systems, **over))
        exp = Experiment(cfg)
        fed = make_federation(cfg, exp.data, exp.build_model())
        assert cfg.systems is not None
        return build_systems(cfg.systems, fed), fed

    return make
