import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from pydantic import ValidationError

from fedmtl.config.privacy import AdaptiveClippingConfig, DPConfig, PrivacyConfig, SecureAggregationConfig
from fedmtl.privacy.dp import (
    DPFedAvg,
    PrivacyAccountant,
    adaptive_clip_step,
    clip_update,
    epsilon_schedule,
    global_norm,
    noise_for_target_epsilon,
    update_noise_multiplier,
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), clip=st.floats(1e-2, 10.0))
def test_clipping_bound_holds_for_every_client(seed, scale, clip):
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):  # five clients
        delta = {
            "shared.w": torch.randn(7, 3, generator=g) * scale,
            "task:a.w": torch.randn(4, generator=g) * scale,
        }
        out, norm = clip_update(delta, clip)
        assert global_norm(out) <= clip * (1 + 1e-6)
        if norm <= clip:
            assert all(torch.equal(out[k], delta[k]) for k in delta)
        else:  # direction kept
            ratio = out["shared.w"] / delta["shared.w"]
            assert torch.allclose(ratio, torch.full_like(ratio, clip / norm), rtol=1e-4)


def test_clip_does_not_mutate_and_validates():
    d = {"a": torch.ones(4) * 10}
    clip_update(d, 1.0)
    assert torch.equal(d["a"], torch.ones(4) * 10)
    with pytest.raises(ValueError, match="clip_norm must be > 0, got 0"):
        clip_update(d, 0.0)


@pytest.mark.parametrize("mechanism,opacus_cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_opacus_computed_directly(mechanism, opacus_cls):
    cfg = DPConfig(noise_multiplier=1.1, delta=1e-5, accountant=mechanism)
    plan = DPFedAvg.from_config(cfg, num_clients=1000, cohort_size=50, rounds=10)
    state = plan.init()
    reference = opacus_cls()
    for _ in range(10):
        state, report = plan.server_step(state)
        reference.step(noise_multiplier=1.1, sample_rate=0.05)
        assert report.epsilon == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert report.round == 10 and state.accountant.steps == 10


def test_accountant_is_immutable_and_composes_heterogeneous_steps():
    a = PrivacyAccountant("rdp")
    b = a.step(1.0, 0.1, 5).step(2.0, 0.2)
    assert a.history == () and a.epsilon(1e-5) == 0.0
    ref = RDPAccountant()
    for _ in range(5):
        ref.step(noise_multiplier=1.0, sample_rate=0.1)
    ref.step(noise_multiplier=2.0, sample_rate=0.2)
    assert b.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5))
    assert PrivacyAccountant().step(0.0, 0.1).epsilon(1e-5) == math.inf
    with pytest.raises(ValueError, match="sample_rate must be in"):
        a.step(1.0, 1.5)


def test_target_epsilon_sets_sigma_and_stops_training():
    cfg = DPConfig(target_epsilon=2.0, delta=1e-5)
    plan = DPFedAvg.from_config(cfg, num_clients=500, cohort_size=25, rounds=30)
    expected = get_noise_multiplier(
        target_epsilon=2.0, target_delta=1e-5, sample_rate=0.05, steps=30, accountant="rdp"
    )
    assert plan.noise_multiplier == pytest.approx(expected)
    assert noise_for_target_epsilon(2.0, 1e-5, 0.05, 30) == pytest.approx(expected)
    state, rounds = plan.init(), 0
    while plan.can_run_round(state) and rounds < 100:
        state, report = plan.server_step(state)
        rounds += 1
    assert 30 <= rounds < 100  # ran the planned rounds, then stopped before exceeding the target
    assert report.epsilon <= 2.0
    assert state.accountant.step(plan.noise_multiplier, 0.05).epsilon(1e-5) > 2.0


def test_epsilon_schedule_matches_accountant():
    sched = epsilon_schedule(0.9, 0.02, 10, 1e-5, every=3)
    assert [r for r, _ in sched] == [3, 6, 9, 10]
    ref = RDPAccountant()
    for r in range(1, 11):
        ref.step(noise_multiplier=0.9, sample_rate=0.02)
        if r in (3, 6, 9, 10):
            assert dict(sched)[r] == pytest.approx(ref.get_epsilon(1e-5))
    assert all(a < b for (_, a), (_, b) in zip(sched, sched[1:], strict=False))


def test_server_noise_std_matches_sigma_c():
    plan = DPFedAvg.from_config(
        DPConfig(noise_multiplier=1.3, clip_norm=0.5), num_clients=100, cohort_size=10, rounds=1
    )
    state = plan.init()
    noisy = plan.noise_sums(
        {"shared": torch.zeros(200_000, dtype=torch.float64)},
        state,
        generator=torch.Generator().manual_seed(0),
    )
    std = noisy["shared"].std().item()
    assert std == pytest.approx(1.3 * 0.5, rel=0.01)  # 200k samples: relative s.e. ~ 0.16%
    assert abs(noisy["shared"].mean().item()) < 0.01


def test_distributed_noise_sums_to_sigma_c_and_tops_up():
    cfg = PrivacyConfig(
        dp=DPConfig(noise_multiplier=2.0, clip_norm=1.0, placement="distributed"),
        secure_aggregation=SecureAggregationConfig(),
    )
    plan = DPFedAvg.from_config(cfg.dp, num_clients=100, cohort_size=16, rounds=1)
    state, g = plan.init(), torch.Generator().manual_seed(0)
    parts = [
        plan.client_noise(
            {"shared": torch.zeros(50_000, dtype=torch.float64)}, state, {"shared": 16}, generator=g
        )["shared"]
        for _ in range(16)
    ]
    assert parts[0].std().item() == pytest.approx(2.0 / 4, rel=0.02)
    assert sum(parts).std().item() == pytest.approx(2.0, rel=0.02)
    # only 9 of 16 contributed: server tops up variance (1 - 9/16) sigma^2 C^2
    partial = sum(parts[:9])
    topped = plan.noise_sums(
        {"shared": partial}, state, generator=g, contributors={"shared": 9}, noise_shares={"shared": 16}
    )
    assert topped["shared"].std().item() == pytest.approx(2.0, rel=0.02)


def test_adaptive_clipping_composition_and_convergence():
    z, sigma_b = 1.0, 2.0
    z_delta = update_noise_multiplier(z, sigma_b)
    assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(ValueError, match="2 \\* sigma_b > z"):
        update_noise_multiplier(1.0, 0.4)
    cfg = AdaptiveClippingConfig(target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=0.0)
    new, frac = adaptive_clip_step(1.0, 3.0, 4, cfg, None)
    assert frac == 0.75 and new == pytest.approx(math.exp(-0.2 * 0.25))
    norms = torch.linspace(0.1, 4.0, 100)  # median ~2.05
    clip, g = 0.1, torch.Generator().manual_seed(0)
    cfg = AdaptiveClippingConfig(target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=1.0)
    for _ in range(300):
        clip, _ = adaptive_clip_step(clip, float((norms <= clip).sum()), 100, cfg, g)
    assert clip == pytest.approx(2.05, rel=0.1)


def test_adaptive_dp_round_updates_clip_and_accounts_total_z():
    cfg = DPConfig(noise_multiplier=1.0, adaptive_clipping=AdaptiveClippingConfig(count_noise_multiplier=2.0))
    plan = DPFedAvg.from_config(cfg, num_clients=100, cohort_size=20, rounds=5)
    assert plan.update_noise_multiplier > plan.noise_multiplier
    state, report = plan.server_step(
        plan.init(), unclipped_count=20.0, generator=torch.Generator().manual_seed(0)
    )
    assert state.clip_norm < 1.0 and report.clip_norm == 1.0
    assert state.accountant.history == ((1.0, 0.2, 1),)


def test_config_validation_names_values():
    with pytest.raises(ValidationError, match="noise_multiplier=None, target_epsilon=None"):
        DPConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(ValidationError, match="needs privacy.secure_aggregation"):
        PrivacyConfig(dp=DPConfig(noise_multiplier=1.0, placement="distributed"))
    with pytest.raises(ValidationError, match="threshold=1.5"):
        SecureAggregationConfig(threshold=1.5)
    with pytest.raises(ValidationError, match="degree=5"):
        SecureAggregationConfig(degree=5)
    with pytest.raises(ValidationError, match="extra"):
        PrivacyConfig(dpp=None)
    assert SecureAggregationConfig(threshold=0.6).resolve_threshold(10) == 6
    assert PrivacyConfig().dp is None
