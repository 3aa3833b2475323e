"""Client speeds, bandwidths and round times on the simulated clock, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.config.systems import ClientSystems, Constant, LogNormal
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems import Profiles
from fedmtl.fl.systems.profiles import BANDWIDTH, SPEED, draw


def test_round_time_is_work_over_speed_plus_bytes_over_bandwidth() -> None:
    p = Profiles(speed=[100.0, 50.0], bandwidth=[2000.0, 500.0])
    # 200 samples at 100/s = 2 s; 1000 + 3000 bytes at 2000 B/s = 2 s
    assert p.duration(0, 200, 1000, 3000) == 4.0
    # 200 / 50 = 4 s; 500 / 500 = 1 s
    assert p.duration(1, 200, 250, 250) == 5.0


def test_profiles_refuse_non_positive_values() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Profiles([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="speeds"):
        Profiles([1.0], [1.0, 1.0])


def test_lognormal_draw_is_median_times_exp_sigma_z_per_client() -> None:
    dist = LogNormal(median=200.0, sigma=0.7)
    for c in (0, 3, 17):
        z = float(torch.randn((), generator=generator(5, "systems", SPEED, c), dtype=torch.float64))
        assert draw(dist, 5, SPEED, c) == pytest.approx(200.0 * math.exp(0.7 * z), rel=1e-12)
    assert draw(Constant(value=42.0), 5, SPEED, 3) == 42.0


def test_each_clients_draw_is_independent_of_the_federation_size() -> None:
    cfg = ClientSystems(speed=LogNormal(median=100.0, sigma=1.0), bandwidth=LogNormal(median=1e5, sigma=0.5))
    small, large = Profiles.from_config(cfg, 5, 0), Profiles.from_config(cfg, 50, 0)
    assert small.speed == large.speed[:5] and small.bandwidth == large.bandwidth[:5]
    assert len(set(large.speed)) == 50  # a draw per client
    # speed and bandwidth use separate generators
    assert large.bandwidth[0] == pytest.approx(1e5 * math.exp(0.5 * float(torch.randn((), generator=generator(0, "systems", BANDWIDTH, 0), dtype=torch.float64))))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


def test_speed_trace_is_read_per_client(tmp_path: Path) -> None:
    path = write(tmp_path, "client,speed,bandwidth\n1,20,3000\n0,10.5,1e6\n")
    p = Profiles.from_config(ClientSystems(trace=path), 2, 0)
    assert p.speed == [10.5, 20.0] and p.bandwidth == [1e6, 3000.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("client,speed\n0,1\n1,1\n", "expected exactly"),
        ("client,speed,bandwidth\n0,1,1\n", "lacks clients \\[1\\]"),
        ("client,speed,bandwidth\n0,1,1\n0,2,2\n1,1,1\n", "line 3: client 0 appears twice"),
        ("client,speed,bandwidth\n0,-1,1\n1,1,1\n", "speed '-1' must be a finite number > 0"),
        ("client,speed,bandwidth\n0,fast,1\n1,1,1\n", "speed 'fast' is not a number"),
        ("client,speed,bandwidth\n0,1,inf\n1,1,1\n", "bandwidth 'inf' must be a finite"),
        ("client,speed,bandwidth\n0,1,1\n7,1,1\n", "client 7 is out of range; allowed: 0..1"),
        ("client,speed,bandwidth\nx,1,1\n", "client 'x' is not an integer"),
        ("client,speed,bandwidth\n0,1\n", "expected 3 values"),
    ],
)
def test_bad_speed_traces_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Profiles.from_config(ClientSystems(trace=write(tmp_path, text)), 2, 0)


def test_a_missing_trace_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Profiles.from_config(ClientSystems(trace=str(tmp_path / "nope.csv")), 2, 0)
