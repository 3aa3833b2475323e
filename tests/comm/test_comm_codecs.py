"""Every codec and chain: round trip within its stated bound, bytes shrink as stated, randomness from the generator."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.comm import build_link
from fedmtl.comm.codecs import QSGD
from fedmtl.config.comm import CommConfig


def _chain(*specs: dict) -> list:
    return CommConfig(uplink=list(specs)).uplink


def _bound_identity(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(x, y)


def _bound_fp16(x, y):
    return bool(((x - y).abs() <= 2**-11 * x.abs() + 6e-8).all())


def _bound_bf16(x, y):
    return bool(((x - y).abs() <= 2**-8 * x.abs() + 1e-38).all())


def _bound_int8(x, y):
    return bool(((x - y).abs() <= x.abs().max() / 127 / 2 * (1 + 1e-5) + 1e-12).all())


def _bound_int8_per_channel(x, y):
    if x.dim() < 2:
        return _bound_int8(x, y)
    rows = x.reshape(x.shape[0], -1)
    half = rows.abs().amax(dim=1, keepdim=True) / 127 / 2 * (1 + 1e-5) + 1e-12
    return bool(((rows - y.reshape_as(rows)).abs() <= half).all())


def _bound_qsgd(levels: int, bucket: int):
    def check(x, y):
        flat, err = x.reshape(-1), (x - y).reshape(-1)
        for s in range(0, flat.numel(), bucket):
            b = flat[s : s + bucket]
            if not bool((err[s : s + bucket].abs() <= b.norm() / levels * (1 + 1e-5) + 1e-12).all()):
                return False
        return True

    return check


def _bound_sign(x, y):
    flat = x.reshape(-1)
    scale = flat.abs().mean()
    expected = torch.where(flat >= 0, scale, -scale)
    contraction = (x - y).norm() ** 2 <= (
        1 - flat.abs().sum() ** 2 / (flat.numel() * flat.norm() ** 2) + 1e-5
    ) * flat.norm() ** 2
    return torch.allclose(y.reshape(-1), expected) and bool(contraction)


def _bound_topk(fraction: float):
    def check(x, y):
        flat, out = x.reshape(-1), y.reshape(-1)
        k = max(1, math.ceil(fraction * flat.numel()))
        kept = out != 0
        exact = torch.equal(out[kept], flat[kept])
        threshold = flat.abs().topk(k).values.min()
        return exact and int(kept.sum()) <= k and bool((flat[~kept].abs() <= threshold).all())

    return check


def _bound_randk(fraction: float):
    def check(x, y):
        flat, out = x.reshape(-1), y.reshape(-1)
        kept = out != 0
        return torch.equal(out[kept], flat[kept]) and int(kept.sum()) <= max(
            1, math.ceil(fraction * flat.numel())
        )

    return check


def _bound_blockq(bits: int, block: int):
    def check(x, y):
        flat, err = x.reshape(-1), (x - y).reshape(-1)
        levels = 2 ** (bits - 1) - 1
        for s in range(0, flat.numel(), block):
            if not bool(
                (err[s : s + block].abs() <= flat[s : s + block].abs().max() / levels * (1 + 1e-5)).all()
            ):
                return False
        return True

    return check


def _bound_powersgd(x, y):
    # vectors travel whole; a matrix becomes its projection onto span(P_hat): never longer than itself
    if x.dim() < 2 or x.shape[0] * (x.numel() // max(1, x.shape[0])) <= x.shape[0] + x.numel() // max(
        1, x.shape[0]
    ):
        return torch.equal(x, y)
    return float((x - y).norm()) <= float(x.norm()) * (1 + 1e-5) and float(y.norm()) <= float(x.norm()) * (
        1 + 1e-5
    )


def _bound_sketch(topk: float):
    def check(x, y):
        k = max(1, math.ceil(topk * x.numel()))
        return (
            torch.equal(x, y)
            if 5 * math.ceil(0.05 * x.numel() / 5) >= x.numel()
            else int((y != 0).sum()) <= k
        )

    return check


def _rel(tol: float):
    return lambda x, y: float((x - y).norm()) <= tol * float(x.norm()) + 1e-12


# (id, chain, per-tensor bound on a dense random tensor, max bytes ratio vs float32 for a 64k tensor)
CODECS = [
    ("identity", _chain({"name": "identity"}), _bound_identity, 1.001),
    ("fp16", _chain({"name": "fp16"}), _bound_fp16, 0.501),
    ("bf16", _chain({"name": "bf16"}), _bound_bf16, 0.501),
    ("int8", _chain({"name": "int8"}), _bound_int8, 0.251),
    ("int8_channel", _chain({"name": "int8", "per_channel": True}), _bound_int8_per_channel, 0.255),
    ("qsgd", _chain({"name": "qsgd", "levels": 8, "bucket_size": 64}), _bound_qsgd(8, 64), 0.27),
    ("sign", _chain({"name": "sign"}), _bound_sign, 1 / 32 + 0.002),
    ("sign_block", _chain({"name": "sign", "block_size": 16}), _rel(1.0), 1 / 32 + 1 / 16 + 0.002),
    ("topk", _chain({"name": "topk", "fraction": 0.05}), _bound_topk(0.05), 0.101),
    ("randk", _chain({"name": "randk", "fraction": 0.05}), _bound_randk(0.05), 0.051),
    (
        "blockq4",
        _chain({"name": "blockq", "bits": 4, "block_size": 16}),
        _bound_blockq(4, 16),
        0.125 + 1 / 16 + 0.001,
    ),
    (
        "blockq2",
        _chain({"name": "blockq", "bits": 2, "block_size": 64}),
        _bound_blockq(2, 64),
        1 / 16 + 1 / 64 + 0.001,
    ),
    ("blockq8", _chain({"name": "blockq", "bits": 8}), _bound_blockq(8, 64), 0.25 + 1 / 64 + 0.001),
    ("dgc", _chain({"name": "dgc", "fraction": 0.05, "warmup": 0}), _bound_topk(0.05), 0.101),
    ("dgc_warmup", _chain({"name": "dgc", "fraction": 0.05}), _bound_topk(0.25), 0.501),
    ("dgc_bitmap", _chain({"name": "dgc", "fraction": 0.05, "warmup": 0, "index_coding": "bitmap"}), _bound_topk(0.05), 0.101),
    ("powersgd", _chain({"name": "powersgd", "rank": 1}), _bound_powersgd, 2 / 256 + 0.001),
    ("sketch", _chain({"name": "sketch", "fraction": 0.05, "topk": 0.01}), _bound_sketch(0.01), 0.051),
    ("zstd", _chain({"name": "zstd", "level": 3}), _bound_identity, 1.001),
    ("zstd_dictionary", _chain({"name": "zstd", "level": 3, "dictionary": 1}), _bound_identity, 1.001),
    ("lz4", _chain({"name": "lz4"}), _bound_identity, 1.01),
    (
        "topk_int8_zstd",
        _chain({"name": "topk", "fraction": 0.05}, {"name": "int8"}, {"name": "zstd"}),
        _rel(0.98),
        0.065,
    ),
    (
        "randk_fp16_lz4",
        _chain({"name": "randk", "fraction": 0.1}, {"name": "fp16"}, {"name": "lz4"}),
        _rel(0.98),
        0.06,
    ),
    ("qsgd_zstd", _chain({"name": "qsgd", "levels": 4}, {"name": "zstd"}), _rel(2.0), 0.15),
    ("sign_zstd", _chain({"name": "sign"}, {"name": "zstd"}), _rel(1.0), 1 / 32 + 0.003),
    (
        "int8_lz4",
        _chain({"name": "int8", "per_channel": True}, {"name": "lz4"}),
        _bound_int8_per_channel,
        0.26,
    ),
]
IDS = [c[0] for c in CODECS]
SHAPES = [(37,), (16, 9), (4, 3, 5), (1,), ()]


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(s, generator=g) * (10.0 ** (i - 2)) for i, s in enumerate(SHAPES)}


@pytest.mark.parametrize(("name", "chain", "bound", "ratio"), CODECS, ids=IDS)
def test_round_trip_within_bound(name, chain, bound, ratio):
    link = build_link(chain)
    x = _tensors()
    data, _ = link.encode(x, {}, torch.Generator().manual_seed(1))
    y = link.decode(data, expected={k: v.shape for k, v in x.items()})
    assert set(y) == set(x)
    for k in x:
        assert y[k].shape == x[k].shape and y[k].dtype == x[k].dtype
        assert bound(x[k], y[k]), (name, k)


@pytest.mark.parametrize(("name", "chain", "bound", "ratio"), CODECS, ids=IDS)
def test_bytes_shrink_as_stated(name, chain, bound, ratio):
    x = {"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(0))}
    data, _ = build_link(chain).encode(x, {}, torch.Generator().manual_seed(0))
    assert len(data) <= ratio * 4 * x["w"].numel() + 600, (name, len(data) / (4 * x["w"].numel()))


@pytest.mark.parametrize(("name", "chain", "bound", "ratio"), CODECS, ids=IDS)
def test_same_generator_same_bytes_and_no_global_rng(name, chain, bound, ratio):
    link = build_link(chain)
    x = _tensors()
    before = torch.get_rng_state()
    a, _ = link.encode(x, {}, torch.Generator().manual_seed(5))
    b, _ = link.encode(x, {}, torch.Generator().manual_seed(5))
    assert a == b
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(
    "spec", [{"name": "qsgd"}, {"name": "randk", "fraction": 0.5}, {"name": "blockq"}, {"name": "powersgd"}]
)
def test_stochastic_codecs_require_a_generator(spec):
    link = build_link(_chain(spec))
    assert link.stochastic
    with pytest.raises(ValueError, match="torch.Generator"):
        link.encode({"w": torch.ones(4, 4)}, {})


def test_qsgd_is_unbiased():
    codec = QSGD(levels=2, bucket_size=16)
    x = torch.randn(48, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    draws = 4000
    total = torch.zeros_like(x)
    for _ in range(draws):
        total += codec.decode(codec.encode(x, x.shape, g), x.numel(), tuple(x.shape))
    mean = total / draws
    per_coord = torch.cat([x[i : i + 16].norm().expand(16) for i in range(0, 48, 16)]) / 2  # ||v|| / s
    # each draw is within ||v||/s of x, so the mean's std is <= ||v|| / (2 s sqrt(draws))
    assert bool(((mean - x).abs() <= 5 * per_coord / (2 * math.sqrt(draws))).all())
    one = codec.decode(codec.encode(x, x.shape, g), x.numel(), tuple(x.shape))
    assert not torch.allclose(one, x)  # a single draw is genuinely quantised


def test_fp16_clamps_instead_of_overflowing():
    link = build_link(_chain({"name": "fp16"}))
    y = link.decode(link.encode({"w": torch.tensor([1e6, -1e6, 1.0])}, {})[0])
    assert torch.isfinite(y["w"]).all() and float(y["w"][0]) == 65504.0


def test_non_float_tensors_travel_raw_and_dtypes_are_kept():
    link = build_link(_chain({"name": "topk", "fraction": 0.5}, {"name": "int8"}))
    x = {
        "steps": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "d": torch.randn(8, dtype=torch.float64),
    }
    y = link.decode(link.encode(x, {})[0])
    assert torch.equal(y["steps"], x["steps"]) and torch.equal(y["mask"], x["mask"])
    assert y["d"].dtype == torch.float64


def test_empty_chain_is_identity_and_empty_payload_round_trips():
    link = build_link([])
    assert [c.name for c in link.codecs] == ["identity"] and not link.stateful
    assert link.decode(link.encode({}, {})[0]) == {}


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ([{"name": "zstd"}, {"name": "int8"}], "cannot follow 'zstd'"),
        ([{"name": "int8"}, {"name": "topk"}], "order is sparsifier -> quantiser -> byte codec"),
        ([{"name": "int8"}, {"name": "qsgd"}], "two quantiser"),
        ([{"name": "zstd"}, {"name": "lz4"}], "two byte codec"),
        ([{"name": "topk"}, {"name": "randk"}], "two sparsifier"),
    ],
)
def test_chain_order_is_validated(chain, message):
    with pytest.raises(ValueError, match=message):
        CommConfig(uplink=chain)


def test_codec_parameters_are_validated():
    with pytest.raises(ValueError, match="fraction"):
        CommConfig(uplink=[{"name": "topk", "fraction": 0}])
    with pytest.raises(ValueError, match="levels"):
        QSGD(levels=0)


@pytest.mark.parametrize(("name", "chain", "bound", "ratio"), CODECS, ids=IDS)
def test_empty_and_zero_tensors(name, chain, bound, ratio):
    link = build_link(chain)
    x = {"empty": torch.zeros(0, 3), "zero": torch.zeros(5, 2)}
    out = link.decode(
        link.encode(x, {}, torch.Generator().manual_seed(0))[0], {k: v.shape for k, v in x.items()}
    )
    assert out["empty"].shape == (0, 3) and torch.equal(out["zero"], x["zero"])
