"""The four compressive codecs against hand-computed values: block quantiser, DGC top-k, PowerSGD, count sketch."""

from __future__ import annotations

import math
import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.comm import PayloadError, build_link, unpack
from fedmtl.comm.codecs import BlockQuantiser, CountSketch, DGCTopK, PowerSGD
from fedmtl.comm.wire import FRAME_BYTES
from fedmtl.config.comm import CommConfig
from fedmtl.tree import flatten, unflatten


def _link(*specs: dict):
    return build_link(CommConfig(uplink=list(specs)).uplink)


# -- block quantiser ---------------------------------------------------------------------------
def test_blockq_packs_integer_levels_exactly_by_hand():
    # bits 2: L = 1; values already on the grid round to themselves; codes + L = [2, 0, 1, 2]
    codec = BlockQuantiser(bits=2, block_size=4)
    parts = codec.encode(torch.tensor([1.0, -1.0, 0.0, 1.0]), (4,), torch.Generator().manual_seed(0))
    assert parts["codes"].tolist() == [2 | 0 << 2 | 1 << 4 | 2 << 6]  # 146
    assert parts["scale"].tolist() == [1.0]
    assert codec.decode(parts, 4, (4,)).tolist() == [1.0, -1.0, 0.0, 1.0]


def test_blockq_rounds_to_the_two_neighbouring_levels():
    # bits 4: L = 7, s = 1: 0.5 -> 3.5/7 in {3/7, 4/7}; -1 -> -1; 0.25 -> 1.75/7 in {1/7, 2/7}; 0 -> 0
    codec = BlockQuantiser(bits=4, block_size=4)
    x = torch.tensor([0.5, -1.0, 0.25, 0.0])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y = codec.decode(codec.encode(x, (4,), g), 4, (4,)) * 7
        assert (
            round(float(y[0])) in (3, 4)
            and float(y[1]) == -7
            and round(float(y[2])) in (1, 2)
            and float(y[3]) == 0
        )


def test_blockq_is_unbiased():
    codec = BlockQuantiser(bits=2, block_size=8)
    x = torch.randn(32, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    draws = 4000
    mean = sum(codec.decode(codec.encode(x, (32,), g), 32, (32,)) for _ in range(draws)) / draws
    scale = torch.cat([x[i : i + 8].abs().max().expand(8) for i in range(0, 32, 8)])  # error < s / L, L = 1
    assert bool(((mean - x).abs() <= 5 * scale / (2 * math.sqrt(draws))).all())


def test_blockq_exact_bytes():
    # 1000 coordinates, 4 bits, blocks of 64: 500 code bytes and 16 float32 scales in the archive
    codec = BlockQuantiser(bits=4, block_size=64)
    parts = codec.encode(torch.randn(1000), (1000,), torch.Generator().manual_seed(0))
    assert (
        parts["codes"].numel() == 500 and parts["codes"].dtype == torch.uint8 and parts["scale"].numel() == 16
    )


def test_blockq_rejects_codes_beyond_its_levels():
    codec = BlockQuantiser(bits=4, block_size=4)
    with pytest.raises(PayloadError, match="codes exceed 14"):
        codec.decode(
            {"codes": torch.tensor([0xFF, 0xFF], dtype=torch.uint8), "scale": torch.ones(1)}, 4, (4,)
        )


# -- DGC ---------------------------------------------------------------------------------------
def test_dgc_momentum_correction_and_masking_by_hand():
    link = _link({"name": "dgc", "fraction": 0.25, "momentum": 0.5, "warmup": 0})
    d1, s1 = link.encode({"w": torch.tensor([1.0, 0.1, 0.0, 0.0])}, {})
    assert link.decode(d1)["w"].tolist() == [1.0, 0.0, 0.0, 0.0]
    s1 = unflatten(flatten(s1))  # survives a checkpoint
    assert torch.allclose(s1["residual"]["w"], torch.tensor([0.0, 0.1, 0.0, 0.0]))
    assert torch.allclose(
        s1["memory"]["w"]["momentum"], torch.tensor([0.0, 0.1, 0.0, 0.0])
    )  # masked at index 0
    # u = 0.5 * [0, .1, 0, 0] + [0, 0, .3, 0] = [0, .05, .3, 0]; v = u + residual = [0, .15, .3, 0]
    d2, s2 = link.encode({"w": torch.tensor([0.0, 0.0, 0.3, 0.0])}, s1)
    assert torch.allclose(link.decode(d2)["w"], torch.tensor([0.0, 0.0, 0.3, 0.0]))
    assert torch.allclose(s2["residual"]["w"], torch.tensor([0.0, 0.15, 0.0, 0.0]))
    assert torch.allclose(s2["memory"]["w"]["momentum"], torch.tensor([0.0, 0.05, 0.0, 0.0]))
    assert int(s2["memory"]["w"]["step"]) == 2


def test_dgc_warmup_schedule_and_exact_bytes():
    # Lin et al. 2018, Section 3.3: 75 %, 93.75 %, 98.4375 % sparsity, then the target (99 %)
    codec = DGCTopK(fraction=0.01, momentum=0.0, warmup=4)
    assert [codec.kept_at(t, 1000) for t in range(6)] == [250, 63, 16, 10, 10, 10]
    link = _link({"name": "dgc", "fraction": 0.01, "momentum": 0.0, "warmup": 4})
    state: dict = {}
    for k in [250, 63, 16, 10, 10]:
        data, state = link.encode({"w": torch.randn(1000)}, state)
        _, parts = unpack(data)
        # each kept coordinate costs 4 bytes (int32 index) + 4 bytes (float32 value)
        assert parts["0.indices"].nbytes == 4 * k and parts["0.values"].nbytes == 4 * k
        assert int((link.decode(data)["w"] != 0).sum()) == k


def test_dgc_receiver_bounds_the_number_of_indices():
    codec = DGCTopK(fraction=0.1)
    with pytest.raises(PayloadError, match="allowed 10..100"):
        codec.count({"indices": torch.arange(5, dtype=torch.int32)}, 100)
    with pytest.raises(PayloadError, match="strictly increasing"):
        codec.expand({"indices": torch.tensor([3, 0], dtype=torch.int32)}, torch.ones(2), 10)
    with pytest.raises(PayloadError, match="outside"):
        codec.expand({"indices": torch.tensor([3, 7], dtype=torch.int32)}, torch.ones(2), 10)


def test_dgc_indices_travel_gap_coded():
    codec = DGCTopK(fraction=0.3, momentum=0.0, warmup=0)
    parts, values = codec.select(torch.tensor([0.0, 5.0, 0.0, 0.0, -4.0, 0.0, 0.0, 3.0, 0.0, 0.0]), None)
    assert parts["indices"].tolist() == [1, 3, 3] and values.tolist() == [5.0, -4.0, 3.0]  # indices 1, 4, 7
    assert codec.expand(parts, values, 10).nonzero().reshape(-1).tolist() == [1, 4, 7]


def test_dgc_bitmap_packs_a_bit_per_coordinate_by_hand():
    from fedmtl.comm.codecs.dgc import pack_mask, unpack_mask

    mask = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.tolist() == [0b10010000, 0b10000000]
    assert torch.equal(unpack_mask(packed, 9), mask)
    with pytest.raises(PayloadError, match="beyond the tensor"):
        unpack_mask(torch.tensor([0, 0b01000000], dtype=torch.uint8), 9)  # the 10th bit of 9 entries
    with pytest.raises(PayloadError, match="expected 2"):
        unpack_mask(torch.tensor([0], dtype=torch.uint8), 9)
    codec = DGCTopK(fraction=0.3, momentum=0.0, warmup=0, index_coding="bitmap")
    parts, values = codec.select(torch.tensor([0.0, 5.0, 0.0, 0.0, -4.0, 0.0, 0.0, 3.0, 0.0, 0.0]), None)
    assert parts["mask"].tolist() == [0b01001001, 0] and values.tolist() == [5.0, -4.0, 3.0]  # 1, 4, 7
    assert codec.expand(parts, values, 10).nonzero().reshape(-1).tolist() == [1, 4, 7]
    with pytest.raises(PayloadError, match="keeps 3 entries, the payload carries 2"):
        codec.expand(parts, values[:2], 10)
    with pytest.raises(PayloadError, match="allowed 3..10"):
        codec.count({"mask": torch.tensor([0b01000000, 0], dtype=torch.uint8)}, 10)
    with pytest.raises(ValueError, match="index_coding"):
        DGCTopK(index_coding="bits")


@pytest.mark.parametrize("momentum,warmup", [(0.0, 0), (0.5, 2)])
def test_dgc_bitmap_sends_what_the_gaps_send_in_fewer_bytes(momentum, warmup):
    # the same coordinates, values and sender state (momentum masking, warm-up), only the indices' coding differs
    spec = {"name": "dgc", "fraction": 0.2, "momentum": momentum, "warmup": warmup}
    zstd = {"name": "zstd", "level": 19}
    gaps = _link(spec, {"name": "blockq", "bits": 4}, zstd)
    bitmap = _link({**spec, "index_coding": "bitmap"}, {"name": "blockq", "bits": 4}, zstd)
    g = torch.Generator().manual_seed(0)
    sg: dict = {}
    sb: dict = {}
    for _ in range(3):
        x = {"w": torch.randn(20000, generator=g)}
        a, sg = gaps.encode(x, sg, torch.Generator().manual_seed(1))
        b, sb = bitmap.encode(x, sb, torch.Generator().manual_seed(1))
        assert torch.equal(gaps.decode(a)["w"], bitmap.decode(b)["w"])
        assert len(b) < 0.9 * len(a)
    assert all(torch.equal(sg["residual"][n], sb["residual"][n]) for n in sg["residual"])


# -- PowerSGD ----------------------------------------------------------------------------------
def test_powersgd_recovers_a_rank_one_matrix_and_keeps_q_for_the_warm_start():
    m = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])  # (1, 2, 3)^T (1, 2)
    link = _link({"name": "powersgd", "rank": 1, "error_feedback": False})
    data, state = link.encode({"m": m}, {}, torch.Generator().manual_seed(0))
    assert torch.allclose(link.decode(data)["m"], m, atol=1e-5)
    q = state["memory"]["m"]["q"]  # Q = M^T P_hat, with P_hat = (1, 2, 3) / sqrt(14) up to sign
    assert torch.allclose(q.abs().reshape(-1), torch.tensor([1.0, 2.0]) * math.sqrt(14), atol=1e-5)
    codec = PowerSGD(rank=1)
    parts = codec.encode(m.reshape(-1), (3, 2), None, {"q": q})  # warm start: no generator needed
    assert parts["p"].numel() == 3 and parts["q"].numel() == 2  # exact: 4 (n + m) r bytes of floats


def test_powersgd_warm_start_converges_to_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 8, generator=g)
    codec = PowerSGD(rank=2)
    memory: dict = {}
    for _ in range(60):
        parts = codec.encode(m.reshape(-1), (12, 8), g, memory)
        memory = codec.after(memory, parts)
    approx = codec.decode(parts, 96, (12, 8)).reshape(12, 8)
    s = torch.linalg.svdvals(m)
    assert math.isclose(float((m - approx).norm()), float(s[2:].norm()), rel_tol=1e-3)  # Eckart-Young


def test_powersgd_sends_vectors_and_small_matrices_whole():
    codec = PowerSGD(rank=2)
    assert codec.dims(10, (10,)) is None and codec.dims(9, (3, 3)) is None and codec.dims(12, (4, 3)) is None
    assert codec.dims(30, (10, 3)) == (10, 3)  # 2 * 13 < 30


# -- count sketch ------------------------------------------------------------------------------
def test_sketch_table_matches_the_definition_and_is_linear():
    codec = CountSketch(fraction=0.2, rows=3, topk=0.05, seed=7)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(100, generator=g), torch.randn(100, generator=g)
    buckets, signs = codec.hashes(100)
    cols = codec.cols(100)
    assert cols == 7 and codec.kept(100) == 21
    table = torch.zeros(3, cols)
    for r in range(3):
        for j in range(100):
            table[r, buckets[r, j]] += signs[r, j] * a[j]
    _, got = codec.select(a, None)
    assert torch.allclose(got.reshape(3, cols), table, atol=1e-5)
    assert torch.allclose(codec.select(a + b, None)[1], got + codec.select(b, None)[1], atol=1e-5)


def test_sketch_recovers_heavy_hitters_exactly():
    codec = CountSketch(fraction=0.1, rows=5, topk=0.002, seed=0)
    x = torch.zeros(5000)
    x[[17, 4321]] = torch.tensor([3.0, -2.0])
    y = codec.expand({}, codec.select(x, None)[1], 5000)
    assert torch.equal(y, x)


def test_sketch_bytes_are_the_table():
    link = _link({"name": "sketch", "fraction": 0.05, "rows": 5, "topk": 0.01})
    plain = _link({"name": "identity"})
    x = {"w": torch.randn(20000)}
    assert len(link.encode(x, {})[0]) - len(plain.encode({"w": torch.randn(1000)}, {})[0]) < 200  # 1000 cells


@pytest.mark.parametrize("name", ["dgc", "sketch", "powersgd"])
def test_update_only_codecs_are_refused_on_a_full_downlink(name):
    with pytest.raises(ValueError, match="not updates"):
        CommConfig(downlink=[{"name": name}])


# -- zstd's header dictionary ------------------------------------------------------------------
def test_zstd_header_dictionary_saves_header_bytes_and_must_match():
    g = torch.Generator().manual_seed(0)
    x = {f"trunk.net.{i}.weight": torch.randn(8, 8, generator=g) for i in range(6)}
    chain = [{"name": "qsgd", "levels": 1, "bucket_size": 64}]
    plain = _link(*chain, {"name": "zstd", "level": 19})
    primed = _link(*chain, {"name": "zstd", "level": 19, "dictionary": 1})
    a, _ = plain.encode(x, {}, torch.Generator().manual_seed(1))
    b, _ = primed.encode(x, {}, torch.Generator().manual_seed(1))
    assert len(b) <= len(a) - 100
    assert all(torch.equal(plain.decode(a)[k], primed.decode(b)[k]) for k in x)  # the same tensors
    with pytest.raises(PayloadError, match="does not decompress"):  # a receiver without the dictionary
        plain.decode(b)
    with pytest.raises(ValueError, match="dictionary"):
        CommConfig(uplink=[{"name": "zstd", "dictionary": 2}])


# -- scaled sign with a scale per block --------------------------------------------------------
def test_block_sign_by_hand_and_per_block_contraction():
    from fedmtl.comm.codecs import ScaledSign

    codec = ScaledSign(block_size=2)
    x = torch.tensor([1.0, -3.0, 0.5, 0.5, -2.0])  # blocks [1, -3], [.5, .5], [-2]: scales 2, .5, 2
    parts = codec.encode(x, (5,), None)
    assert parts["scale"].tolist() == [2.0, 0.5, 2.0] and parts["bits"].numel() == 1
    y = codec.decode(parts, 5, (5,))
    assert y.tolist() == [2.0, -2.0, 0.5, 0.5, -2.0]
    whole = ScaledSign().decode(ScaledSign().encode(x, (5,), None), 5, (5,))
    assert float((x - y).norm()) <= float((x - whole).norm())


# -- hostile payloads --------------------------------------------------------------------------
_FUZZ_SHAPES = {"w": torch.Size([12, 9]), "b": torch.Size([12]), "h": torch.Size([3, 12])}
_FUZZ_CHAINS = {
    "dgc": [{"name": "dgc", "fraction": 0.1}, {"name": "blockq", "bits": 4, "block_size": 8}],
    "dgc_bitmap": [{"name": "dgc", "fraction": 0.1, "index_coding": "bitmap"}, {"name": "blockq", "bits": 4, "block_size": 8}],
    "powersgd": [{"name": "powersgd", "rank": 2}],
    "sketch": [{"name": "sketch", "fraction": 0.5, "rows": 3, "topk": 0.1}, {"name": "blockq", "bits": 2}],
    "sign_block": [{"name": "sign", "block_size": 5}, {"name": "zstd", "dictionary": 1}],
}


@pytest.mark.parametrize("chain", sorted(_FUZZ_CHAINS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_payloads_of_the_new_codecs_only_ever_raise_payload_error(chain, data):
    link = _link(*_FUZZ_CHAINS[chain])
    g = torch.Generator().manual_seed(0)
    x = {k: torch.randn(s, generator=g) for k, s in _FUZZ_SHAPES.items()}
    payload = bytearray(link.encode(x, {}, g)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    blob = bytes(payload)
    if data.draw(st.booleans()):  # a sender that recomputes the checksum around its tampering
        head = blob[: FRAME_BYTES - 4]
        blob = head + struct.pack("<I", zlib.crc32(blob[FRAME_BYTES:], zlib.crc32(head))) + blob[FRAME_BYTES:]
    try:
        out = link.decode(blob, expected=_FUZZ_SHAPES)
    except PayloadError:
        return
    assert set(out) <= set(_FUZZ_SHAPES) and all(bool(torch.isfinite(v).all()) for v in out.values())
