"""A hostile sender cannot make the receiver allocate more than it expects: declared names, shapes, dtypes
and sizes are checked from the header before anything is decompressed or decoded (issue 17)."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.comm import PayloadError, build_link, pack
from fedmtl.comm.codecs.lossless import Zstd
from fedmtl.comm.link import check_declared
from fedmtl.comm.wire import MAGIC, WIRE_VERSION
from fedmtl.config.comm import CommConfig
from fedmtl.fl.algorithm_channel import decode_outbox, outbox_bound
from fedmtl.fl.byzantine import BOMB_ENTRIES, payload_bomb

SPECS = {"trunk.w": torch.Size([8, 4]), "head.b": torch.Size([4])}


def _link(*specs):
    return build_link(CommConfig(uplink=list(specs) or [{"name": "identity"}]).uplink)


@pytest.fixture
def spy(monkeypatch):
    """Every ``(numel, shape)`` a link's decoder is asked to materialise, and every decompression size."""
    calls: dict[str, list] = {"decode": [], "decompress": []}
    from fedmtl.comm.link import Link

    real_decode, real_decompress = Link._decode_one, Zstd.decompress

    def decode_one(self, parts, shape):
        calls["decode"].append(tuple(shape))
        return real_decode(self, parts, shape)

    def decompress(self, data, raw_size):
        calls["decompress"].append(raw_size)
        return real_decompress(self, data, raw_size)

    monkeypatch.setattr(Link, "_decode_one", decode_one)
    monkeypatch.setattr(Zstd, "decompress", decompress)
    return calls


def test_a_356_byte_topk_payload_declaring_a_billion_entries_is_refused_before_decoding(spy):
    link = _link({"name": "topk", "fraction": 0.01})
    header = {"chain": link.chain_spec, "tensors": [["trunk.w", [700_000_000], "torch.float32"]]}
    data = pack({"0.indices": torch.zeros(1, dtype=torch.int32), "0.values": torch.zeros(1)}, header)
    assert len(data) < 400
    with pytest.raises(PayloadError, match="oversized payload: declared tensors exceed"):
        link.decode(data, expected=SPECS)
    header["tensors"] = [["trunk.w", [200_000_000], "torch.float32"]]  # within the link's 1 GiB, not what is expected
    data = pack({"0.indices": torch.zeros(1, dtype=torch.int32), "0.values": torch.zeros(1)}, header)
    with pytest.raises(PayloadError, match="shape \\[200000000\\], expected \\[8, 4\\]"):
        link.decode(data, expected=SPECS)
    assert spy["decode"] == []


def test_payload_bomb_attack_is_refused_before_decoding(spy):
    link = _link()
    data = payload_bomb(link, ["trunk.w"])
    assert len(data) < 2048 and 4 * BOMB_ENTRIES >= 2**30
    with pytest.raises(PayloadError, match="shape \\[268435456\\]"):
        link.decode(data, expected=SPECS)
    with pytest.raises(PayloadError, match="oversized"):  # two names: 2 GiB, beyond even the link's limit
        link.decode(payload_bomb(link, list(SPECS)), expected=SPECS)
    assert spy["decode"] == []


def _zstd_frame(raw_size: int) -> bytes:
    """A well-framed zstd payload whose body inflates to ``raw_size`` zero bytes (a decompression bomb)."""
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    chunk = bytes(1 << 20)
    body = b"".join(cobj.compress(chunk) for _ in range(raw_size >> 20)) + cobj.flush()
    head = struct.pack("<4sBBHQQ", MAGIC, WIRE_VERSION, 1, 0, raw_size, len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def test_zstd_bomb_is_bounded_by_the_expected_size_not_the_link_limit(spy):
    link = _link({"name": "zstd"})  # max_payload_mb default: 1 GiB
    data = _zstd_frame(64 << 20)  # 64 MiB of zeros in a few kB
    assert len(data) < 16_000
    with pytest.raises(PayloadError, match="oversized"):
        link.decode(data, expected=SPECS)  # 36 floats expected: the bound is a few kB
    assert spy["decompress"] == []


def test_an_honest_zstd_payload_within_its_bound_still_decodes(spy):
    link = _link({"name": "zstd"})
    x = {"trunk.w": torch.randn(8, 4), "head.b": torch.randn(4)}
    out = link.decode(link.encode(x, {})[0], expected=SPECS)
    assert all(torch.equal(out[k], x[k]) for k in x) and len(spy["decompress"]) == 1


def test_dtype_is_checked_against_a_tensor_spec():
    link = _link()
    data = link.encode({"w": torch.zeros(3, dtype=torch.float64)}, {})[0]
    with pytest.raises(PayloadError, match="dtype torch.float64, expected torch.float32"):
        link.decode(data, expected={"w": torch.empty(3, device="meta")})
    with pytest.raises(PayloadError, match="expected a floating dtype"):
        link.decode(link.encode({"w": torch.zeros(3, dtype=torch.int64)}, {})[0], expected={"w": torch.Size([3])})
    assert link.decode(data, expected={"w": torch.Size([3])})["w"].dtype == torch.float64


def test_a_function_spec_needs_explicit_bounds_and_enforces_them():
    link = _link()
    data = link.encode({"a/w": torch.zeros(3), "b/w": torch.zeros(3)}, {})[0]
    spec = lambda name: torch.Size([3]) if name.endswith("/w") else None  # noqa: E731
    with pytest.raises(ValueError, match="max_numel and max_tensors"):
        link.decode(data, spec)
    with pytest.raises(PayloadError, match="declares 2 tensors, at most 1"):
        link.decode(data, spec, max_numel=100, max_tensors=1)
    with pytest.raises(PayloadError, match="more than the 5 entries"):
        link.decode(data, spec, max_numel=5, max_tensors=2)
    assert set(link.decode(data, spec, max_numel=6, max_tensors=2)) == {"a/w", "b/w"}


def test_outbox_bound_admits_what_mirrors_the_server_state_and_nothing_more():
    """FedEM with K = 3: two components of the held parameters travel up; three would exceed the state's size."""
    link = _link()
    params = {"trunk.w": torch.Size([8, 4]), "head.b": torch.Size([4])}
    state = {"components": {str(k): {n: torch.zeros(s) for n, s in params.items()} for k in (1, 2)}}
    numel, tensors = outbox_bound(state, params)
    assert (numel, tensors) == (3 * 36, 6)
    good = {f"components/{k}/{n}": torch.ones(s) for k in (1, 2) for n, s in params.items()}
    out = decode_outbox(link, link.encode(good, {})[0], params, numel, tensors)
    assert set(out["components"]) == {"1", "2"}
    four = {f"components/{k}/{n}": torch.ones(s) for k in range(4) for n, s in params.items()}
    with pytest.raises(PayloadError, match="declares 8 tensors, at most 6"):
        decode_outbox(link, link.encode(four, {})[0], params, numel, tensors)
    with pytest.raises(PayloadError, match="not named after a model parameter"):
        decode_outbox(link, link.encode({"x/secret": torch.ones(2)}, {})[0], params, numel, tensors)
    with pytest.raises(PayloadError, match="shape"):
        decode_outbox(link, payload_bomb(link, ["c/trunk.w"]), params, numel, tensors)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["trunk.w", "head.b", "other", "c/trunk.w"]),
            st.lists(st.integers(0, 2**40), max_size=3),
            st.sampled_from(["torch.float32", "torch.float64", "torch.int64", "torch.float16"]),
        ),
        max_size=4,
        unique_by=lambda e: e[0],
    )
)
def test_declared_headers_pass_only_when_every_tensor_is_expected(entries):
    """Property: whatever a header declares, it passes the check only if each entry is an expected name
    with its shape and a floating dtype, and the total is no more than expected."""
    from fedmtl.comm.link import Bound

    bound = Bound(SPECS.get, 36, 2, 1 << 20)
    meta = [(n, list(s), d) for n, s, d in entries]
    try:
        check_declared(meta, bound)
    except PayloadError:
        return
    assert all(n in SPECS and tuple(s) == tuple(SPECS[n]) and d != "torch.int64" for n, s, d in meta)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["identity", "zstd", "topk", "int8"]))
def test_random_bodies_in_valid_frames_only_raise_payload_error(body, codec):
    link = _link({"name": codec, "fraction": 0.5} if codec == "topk" else {"name": codec})
    codec_id = 1 if codec == "zstd" else 0
    head = struct.pack("<4sBBHQQ", MAGIC, WIRE_VERSION, codec_id, 0, len(body) * 3, len(body))
    data = head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
    with pytest.raises(PayloadError):
        link.decode(data, expected=SPECS)
