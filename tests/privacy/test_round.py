import pytest
import torch

from fedmtl.config.privacy import AdaptiveClippingConfig, DPConfig, PrivacyConfig, SecureAggregationConfig
from fedmtl.fl.aggregation import aggregate_by_group
from fedmtl.fl.update import ClientUpdate
from fedmtl.privacy import DPFedAvg, merge_groups, private_aggregate, split_groups
from fedmtl.privacy.dp import global_norm

GROUPS = {"shared": ["trunk.w", "trunk.b"], "task:a": ["head_a.w"], "task:b": ["head_b.w"]}


def _deltas(n=9, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for c in range(n):
        d = {
            "trunk.w": torch.randn(5, 4, generator=g) * scale,
            "trunk.b": torch.randn(4, generator=g) * scale,
        }
        if c % 3 != 0:
            d["head_a.w"] = torch.randn(4, 2, generator=g) * scale
        if c % 3 != 1:
            d["head_b.w"] = torch.randn(4, 3, generator=g) * scale
        out[c] = d
    return out


def test_split_merge_roundtrip():
    d = _deltas(1)[0]
    flat = split_groups(d, GROUPS)
    assert set(flat) == {"shared", "task:b"}
    back = merge_groups(flat, GROUPS, d)
    assert all(torch.equal(back[k], d[k]) for k in d)
    with pytest.raises(ValueError, match="only part of parameter group 'shared'"):
        split_groups({"trunk.w": d["trunk.w"]}, GROUPS)


@pytest.mark.parametrize("secagg", [False, True])
def test_without_dp_matches_weighted_fedavg_per_group(secagg):
    deltas = _deltas()
    samples = {c: 10 + 7 * c for c in deltas}
    updates = [ClientUpdate(c, d, samples[c], {"a": samples[c], "b": samples[c]}) for c, d in deltas.items()]
    expected = aggregate_by_group(updates, GROUPS)
    cfg = PrivacyConfig(secure_aggregation=SecureAggregationConfig(bits=48) if secagg else None)
    weights = {c: {g: samples[c] / 100 for g in GROUPS} for c in deltas}  # scaled into [0, 1] by a public cap
    res = private_aggregate(
        deltas, GROUPS, cfg, weights=weights, dropped=(), generator=torch.Generator().manual_seed(0)
    )
    assert res.contributors["task:a"] == (1, 2, 4, 5, 7, 8)
    for k in expected:
        assert torch.allclose(res.mean[k].double(), expected[k].double(), atol=1e-6), k
    assert (res.secagg is not None) == secagg


def test_secagg_with_dropouts_averages_survivors():
    deltas = _deltas()
    cfg = PrivacyConfig(secure_aggregation=SecureAggregationConfig(threshold=0.5, bits=48))
    res = private_aggregate(deltas, GROUPS, cfg, dropped={0, 4}, generator=torch.Generator().manual_seed(0))
    who = res.contributors["shared"]
    assert who == (1, 2, 3, 5, 6, 7, 8)
    mean = sum(deltas[c]["trunk.w"].double() for c in who) / len(who)
    assert torch.allclose(res.mean["trunk.w"].double(), mean, atol=1e-6)


def test_dp_round_clips_every_client_and_accounts():
    deltas = _deltas(scale=5.0)
    cfg = PrivacyConfig(dp=DPConfig(noise_multiplier=0.0, clip_norm=0.5))
    plan = DPFedAvg.from_config(cfg.dp, num_clients=90, cohort_size=9, rounds=3)
    res = private_aggregate(deltas, GROUPS, cfg, dp=plan, dp_state=plan.init())
    assert all(n > 0.5 for n in res.norms.values())
    # with sigma = 0 the mean is the mean of clipped updates: check against clipping each client
    from fedmtl.privacy.dp import clip_update

    clipped = {c: clip_update(d, 0.5)[0] for c, d in deltas.items()}
    assert all(global_norm(v) <= 0.5 * (1 + 1e-6) for v in clipped.values())
    expected = sum(clipped[c]["head_a.w"].double() for c in deltas if c % 3) / 6
    assert torch.allclose(res.mean["head_a.w"].double(), expected, atol=1e-6)
    assert res.dp_state.rounds == 1 and res.privacy.round == 1


def test_dp_distributed_under_secagg_with_adaptive_clipping():
    deltas = _deltas(n=12)
    dp = DPConfig(
        noise_multiplier=0.5,
        clip_norm=0.3,
        placement="distributed",
        adaptive_clipping=AdaptiveClippingConfig(count_noise_multiplier=1.0),
    )
    cfg = PrivacyConfig(
        dp=dp, secure_aggregation=SecureAggregationConfig(threshold=0.5, clip_range=4.0, bits=40)
    )
    plan = DPFedAvg.from_config(dp, num_clients=120, cohort_size=12, rounds=5)
    state, g = plan.init(), torch.Generator().manual_seed(0)
    for _ in range(3):
        res = private_aggregate(deltas, GROUPS, cfg, dp=plan, dp_state=state, dropped={3}, generator=g)
        state = res.dp_state
        assert set(res.mean) == {"trunk.w", "trunk.b", "head_a.w", "head_b.w"}
        assert res.secagg.upload_bytes > 0
    assert state.rounds == 3 and state.clip_norm != 0.3
    assert res.privacy.epsilon == pytest.approx(plan.epsilon(state))


def test_dp_arguments_checked():
    with pytest.raises(ValueError, match="pass dp and dp_state"):
        private_aggregate(_deltas(), GROUPS, PrivacyConfig(dp=DPConfig(noise_multiplier=1.0)))
