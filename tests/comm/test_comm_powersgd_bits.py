"""PowerSGD's narrower factors (``bits`` 16 and 8): what travels, its error bound, and the exact warm start kept."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.comm import PayloadError, build_link
from fedmtl.comm.codecs import PowerSGD
from fedmtl.comm.wire import unpack
from fedmtl.config.comm import CommConfig


def _link(*specs: dict):
    return build_link(CommConfig(uplink=list(specs)).uplink)


def test_int8_factors_by_hand_one_scale_per_column():
    # M = (1, 2, 3)^T (1, 2): P_hat = (1, 2, 3) / sqrt(14) (up to sign), Q = sqrt(14) (1, 2)
    m = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    codec = PowerSGD(rank=1, bits=8)
    parts = codec.encode(m.reshape(-1), (3, 2), torch.Generator().manual_seed(0), {})
    sign = float(parts["_q"][0, 0].sign())  # the exact Q, kept for the warm start
    assert torch.allclose(parts["_q"].reshape(-1) * sign, torch.tensor([1.0, 2.0]) * math.sqrt(14), atol=1e-5)
    # P_hat's column: max 3 / sqrt(14) -> scale 3 / sqrt(14) / 127; codes round(127 (1, 2, 3) / 3) = (42, 85, 127)
    assert (parts["p"].long() * int(sign)).tolist() == [42, 85, 127] and parts["p"].dtype == torch.int8
    assert math.isclose(float(parts["p_scale"]), 3 / math.sqrt(14) / 127, rel_tol=1e-5)
    assert (parts["q"].long() * int(sign)).tolist() == [
        64,
        127,
    ]  # round(127 * 1 / 2) = 64 (half to even: 63.5 -> 64)
    got = codec.decode({k: v for k, v in parts.items() if not k.startswith("_")}, 6, (3, 2)).reshape(3, 2)
    p = torch.tensor([42.0, 85.0, 127.0]) * (3 / math.sqrt(14) / 127)
    q = torch.tensor([64.0, 127.0]) * (2 * math.sqrt(14) / 127)
    assert torch.allclose(got, torch.outer(p, q), atol=1e-5)


@pytest.mark.parametrize("bits", [16, 8])
def test_narrow_factors_travel_but_the_exact_q_stays_with_the_sender(bits):
    g = torch.Generator().manual_seed(0)
    x = {"w": torch.randn(40, 30, generator=g), "b": torch.randn(40, generator=g)}
    wide, narrow = (
        _link({"name": "powersgd", "rank": 2}),
        _link({"name": "powersgd", "rank": 2, "bits": bits}),
    )
    a, wide_state = wide.encode(x, {}, torch.Generator().manual_seed(1))
    b, state = narrow.encode(x, {}, torch.Generator().manual_seed(1))
    _, parts = unpack(b, {}, 1 << 20)
    assert sorted(parts) == sorted(f"{i}.{p}" for i in (0, 1) for p in PowerSGD(2, bits).part_names)
    assert torch.equal(
        state["memory"]["w"]["q"], wide_state["memory"]["w"]["q"]
    )  # the same float32 warm start
    # P (40 x 2), Q (30 x 2) and the bias (40, whole) in bits / 8 bytes an entry; int8 adds a float32 scale
    # per factor column and one for the bias
    want = (2 * (40 + 30) + 40) * bits // 8 + (4 * (2 + 2 + 1) if bits == 8 else 0)
    assert sum(t.numel() * t.element_size() for t in parts.values()) == want
    assert len(b) < len(a)
    wide_y, y = wide.decode(a), narrow.decode(b)
    for name, t in x.items():  # narrowing adds at most the factors' rounding to the projection's error
        step = 2.0**-11 if bits == 16 else 1 / 127
        assert float((y[name] - wide_y[name]).norm()) <= 4 * step * float(t.norm()) + 1e-6


def test_int8_whole_tensors_keep_one_scale():
    codec = PowerSGD(rank=1, bits=8)
    v = torch.tensor([0.5, -1.0, 0.25, 0.0])
    parts = codec.encode(v, (4,), None, {})
    assert parts["p"].tolist() == [64, -127, 32, 0] and parts["p_scale"].tolist() == [pytest.approx(1 / 127)]
    assert parts["q"].numel() == 0 and parts["q_scale"].numel() == 0
    assert torch.allclose(codec.decode(parts, 4, (4,)), v, atol=0.5 / 127)


def test_bits_are_validated_and_malformed_scales_refused():
    with pytest.raises(ValueError, match="bits"):
        CommConfig(uplink=[{"name": "powersgd", "bits": 4}])
    with pytest.raises(ValueError, match="bits must be one of"):
        PowerSGD(rank=1, bits=4)
    codec = PowerSGD(rank=1, bits=8)
    parts = codec.encode(torch.randn(12), (3, 4), torch.Generator().manual_seed(0), {})
    parts = {k: v for k, v in parts.items() if not k.startswith("_")}
    with pytest.raises(PayloadError, match="NaN or Inf"):
        codec.decode({**parts, "p_scale": torch.tensor([float("inf")])}, 12, (3, 4))
    with pytest.raises(PayloadError, match="entries"):
        codec.decode({**parts, "q_scale": torch.ones(3)}, 12, (3, 4))
