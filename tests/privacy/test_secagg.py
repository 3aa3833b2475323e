import numpy as np
import pytest
import torch

from fedmtl.config.privacy import SecureAggregationConfig
from fedmtl.privacy.secagg import SecAggError, run_protocol, secure_aggregate
from fedmtl.privacy.secagg.masking import levels, neighbour_graph, quantise


def _updates(n, size=64, seed=0, heads=True):
    g = torch.Generator().manual_seed(seed)
    return {
        c: {
            "shared": torch.randn(size, generator=g) * 0.2,
            **({"task:a": torch.randn(8, generator=g)} if heads and c % 3 else {}),
        }
        for c in range(n)
    }


def _plain_quantised_sums(ups, cfg, contributors):
    out = {}
    for g, who in contributors.items():
        holders = [c for c in ups if g in ups[c]]
        level = levels(cfg.bits, len(holders))
        qs = [
            quantise(ups[c][g], -cfg.clip_range, cfg.clip_range, level, stochastic=False, generator=None)
            for c in who
        ]
        out[g] = np.sum(qs, axis=0, dtype=np.uint64) & np.uint64((1 << cfg.bits) - 1)
    return out


@pytest.mark.parametrize("graph", ["complete", "k_regular"])
def test_masked_inputs_hide_and_sum_exactly(graph):
    ups = _updates(12)
    cfg = SecureAggregationConfig(
        threshold=0.5, rounding="deterministic", graph=graph, degree=6 if graph == "k_regular" else None
    )
    res = secure_aggregate(ups, cfg, dropped=(), generator=torch.Generator().manual_seed(3))
    plain = _plain_quantised_sums(ups, cfg, res.contributors)
    for g in plain:
        assert np.array_equal(res.ring_sums[g], plain[g])  # bit for bit
        true = sum(ups[c][g].double().clamp(-1, 1) for c in res.contributors[g])
        assert torch.allclose(res.sums[g], true, atol=len(res.contributors[g]) * 2 / levels(32, 12))
    assert res.contributors["task:a"] == tuple(c for c in range(12) if c % 3)


def test_server_sees_masked_values_unlike_true_ones():
    ups = _updates(5, heads=False)
    cfg = SecureAggregationConfig(rounding="deterministic")
    level = levels(cfg.bits, 5)
    inputs = {
        c: {"shared": quantise(v["shared"], -1.0, 1.0, level, stochastic=False, generator=None)}
        for c, v in ups.items()
    }
    out = run_protocol(inputs, cfg, generator=torch.Generator().manual_seed(0))
    for c in inputs:
        seen = out.masked[c]["shared"]
        assert (seen != inputs[c]["shared"]).mean() > 0.99
        assert seen.max() > 2**31  # masks spread over the whole ring, not near the quantised values
    mod = np.uint64(2**32 - 1)
    masked_total = np.sum([out.masked[c]["shared"] for c in inputs], axis=0, dtype=np.uint64) & mod
    true_total = np.sum([inputs[c]["shared"] for c in inputs], axis=0, dtype=np.uint64) & mod
    assert not np.array_equal(masked_total, true_total)  # self-masks remain until unmasking
    assert np.array_equal(out.sums["shared"], true_total)


def test_dropouts_up_to_n_minus_t_recovered():
    n = 10
    ups = _updates(n)
    cfg = SecureAggregationConfig(threshold=6, rounding="deterministic")
    res = secure_aggregate(
        ups, cfg, dropped={0, 1, 2}, late_dropped={3}, generator=torch.Generator().manual_seed(1)
    )
    assert res.contributors["shared"] == tuple(range(3, 10))  # late dropout's input still counts
    plain = _plain_quantised_sums(ups, cfg, res.contributors)
    for g in plain:
        assert np.array_equal(res.ring_sums[g], plain[g])


def test_fewer_than_threshold_survivors_refused():
    ups = _updates(10)
    cfg = SecureAggregationConfig(threshold=6, rounding="deterministic")
    with pytest.raises(SecAggError, match="fewer than threshold t=6"):
        secure_aggregate(ups, cfg, dropped={0, 1, 2, 3, 4}, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SecAggError, match="threshold t=6"):  # enough masked inputs, too few reveals
        secure_aggregate(
            ups, cfg, dropped={0, 1}, late_dropped={2, 3, 4}, generator=torch.Generator().manual_seed(1)
        )


def test_tampered_share_detected():
    ups = _updates(4, heads=False)
    cfg = SecureAggregationConfig(threshold=3)
    level = levels(cfg.bits, 4)
    inputs = {
        c: {"shared": quantise(v["shared"], -1.0, 1.0, level, stochastic=False, generator=None)}
        for c, v in ups.items()
    }

    def flip(msgs):
        m = msgs[2]
        blob = bytearray(m.blob)
        blob[20] ^= 0x01
        return msgs[:2] + [type(m)(m.sender, m.recipient, bytes(blob))] + msgs[3:]

    with pytest.raises(SecAggError, match="failed authentication"):
        run_protocol(inputs, cfg, generator=torch.Generator().manual_seed(0), intercept=flip)


def test_group_with_lone_survivor_withheld_others_revealed():
    ups = _updates(6)  # task:a held by 1, 2, 4, 5
    cfg = SecureAggregationConfig(threshold=3, rounding="deterministic", min_group_survivors=2)
    res = secure_aggregate(ups, cfg, dropped={1, 2, 4}, generator=torch.Generator().manual_seed(0))
    assert res.withheld == ("task:a",)
    assert "task:a" not in res.sums and res.contributors["shared"] == (0, 3, 5)


def test_weighted_sum_and_weight_coordinate():
    ups = _updates(6, heads=False)
    w = {c: {"shared": (c + 1) / 6} for c in ups}
    cfg = SecureAggregationConfig(threshold=3, bits=40)
    res = secure_aggregate(ups, cfg, weights=w, dropped=(), generator=torch.Generator().manual_seed(0))
    true = sum(w[c]["shared"] * ups[c]["shared"].double() for c in ups)
    assert torch.allclose(res.sums["shared"], true, atol=1e-6)
    assert res.weight_sums["shared"] == pytest.approx(sum(v["shared"] for v in w.values()), abs=1e-6)
    with pytest.raises(ValueError, match="weight of client 0"):
        secure_aggregate(ups, cfg, weights={c: {"shared": 2.0} for c in ups})


def test_stochastic_rounding_unbiased():
    x = torch.full((20000,), 0.3)
    q = quantise(x, -1.0, 1.0, 10, stochastic=True, generator=torch.Generator().manual_seed(0))
    assert abs(q.mean() / 10 * 2 - 1 - 0.3) < 0.01


def test_k_regular_graph_is_symmetric_and_regular():
    g = neighbour_graph(list(range(50)), 8, torch.Generator().manual_seed(0))
    assert all(len(v) == 8 for v in g.values())
    assert all(i in g[j] for i in g for j in g[i])


def test_secagg_plus_cost_grows_slowly():
    cfg = SecureAggregationConfig(graph="k_regular", degree=6, threshold=0.5)
    small = secure_aggregate(
        _updates(20, size=16, heads=False), cfg, dropped=(), generator=torch.Generator().manual_seed(0)
    )
    big = secure_aggregate(
        _updates(80, size=16, heads=False), cfg, dropped=(), generator=torch.Generator().manual_seed(0)
    )
    assert big.stats.upload_bytes == pytest.approx(small.stats.upload_bytes, rel=0.01)
    full = secure_aggregate(
        _updates(80, size=16, heads=False),
        SecureAggregationConfig(),
        dropped=(),
        generator=torch.Generator().manual_seed(0),
    )
    assert full.stats.upload_bytes > 5 * big.stats.upload_bytes


def test_client_never_reveals_both_shares_of_a_neighbour(monkeypatch):
    ups = _updates(6, heads=False)
    cfg = SecureAggregationConfig(threshold=3, rounding="deterministic")
    level = levels(cfg.bits, 6)
    inputs = {
        c: {"shared": quantise(v["shared"], -1.0, 1.0, level, stochastic=False, generator=None)}
        for c, v in ups.items()
    }
    from fedmtl.privacy.secagg import SecAggClient
    from fedmtl.privacy.secagg.protocol import Reveal

    seen: list[Reveal] = []
    original = SecAggClient.unmask

    def spy(self, survivors, min_group_survivors):
        r = original(self, survivors, min_group_survivors)
        seen.append(r)
        return r

    monkeypatch.setattr(SecAggClient, "unmask", spy)
    run_protocol(inputs, cfg, dropped={0, 1}, generator=torch.Generator().manual_seed(0))
    assert seen
    for r in seen:
        assert set(r.mask_key_shares) == {0, 1}
        assert not set(r.mask_key_shares) & {j for j, _ in r.self_mask_shares}
