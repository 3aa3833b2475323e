"""Every class of malformed payload is rejected with a PayloadError naming its reason."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.comm import PayloadError, build_link, pack, unpack
from fedmtl.comm.wire import FRAME_BYTES, MAGIC
from fedmtl.config.comm import CommConfig

X = {"trunk.w": torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), "head.b": torch.randn(4)}
SHAPES = {k: v.shape for k, v in X.items()}


def _link(*specs):
    return build_link(CommConfig(uplink=list(specs) or [{"name": "identity"}]).uplink)


def _payload(link=None) -> bytes:
    return (link or _link()).encode(X, {}, torch.Generator().manual_seed(0))[0]


def _refresh_crc(data: bytes) -> bytes:
    """Recompute the checksum, as a deliberate (not accidental) forger would."""
    head, body = data[: FRAME_BYTES - 4], data[FRAME_BYTES:]
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def _forge(parts: dict, header: dict, link=None) -> bytes:
    return pack(parts, header, getattr(link, "byte_codec", None))


def _header(link, tensors):
    return {"chain": link._chain_spec, "tensors": tensors}


def test_valid_payload_round_trips():
    out = _link().decode(_payload(), expected=SHAPES)
    assert all(torch.equal(out[k], X[k]) for k in X)


@pytest.mark.parametrize("cut", [0, 5, FRAME_BYTES - 1, FRAME_BYTES + 3, -1])
def test_truncated(cut):
    data = _payload()
    with pytest.raises(PayloadError, match="truncated"):
        _link().decode(data[:cut])


def test_trailing_bytes():
    with pytest.raises(PayloadError, match="trailing"):
        _link().decode(_payload() + b"\0")


@pytest.mark.parametrize("where", [FRAME_BYTES + 1, FRAME_BYTES + 40, -3, 8])
def test_corrupted_checksum(where):
    data = bytearray(_payload(_link({"name": "zstd"})))
    data[where] ^= 0x5A
    with pytest.raises(PayloadError, match="checksum|truncated|oversized"):
        _link({"name": "zstd"}).decode(bytes(data))


def test_body_bit_flip_is_a_checksum_error():
    data = bytearray(_payload())
    data[FRAME_BYTES + 100] ^= 1
    with pytest.raises(PayloadError, match="checksum mismatch"):
        _link().decode(bytes(data))


def test_wrong_version():
    data = bytearray(_payload())
    data[4] = 99
    with pytest.raises(PayloadError, match="unsupported wire version 99"):
        _link().decode(bytes(data))


def test_wrong_magic():
    with pytest.raises(PayloadError, match="not a fedmtl payload"):
        _link().decode(b"PK\x03\x04" + _payload()[4:])


def test_not_bytes():
    with pytest.raises(PayloadError, match="must be bytes"):
        _link().decode("hello")  # type: ignore[arg-type]


def test_wrong_shape_and_unknown_name():
    with pytest.raises(PayloadError, match="shape \\[8, 4\\], expected \\[4, 8\\]"):
        _link().decode(_payload(), expected={"trunk.w": torch.Size([4, 8]), "head.b": torch.Size([4])})
    with pytest.raises(PayloadError, match="unknown tensors \\['head.b'\\]"):
        _link().decode(_payload(), expected={"trunk.w": torch.Size([8, 4])})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(bad):
    x = {"w": torch.tensor([1.0, bad])}
    link = _link()
    with pytest.raises(PayloadError, match="NaN or Inf"):
        link.decode(link.encode(x, {})[0])


def test_non_finite_scale_in_a_forged_int8_payload():
    link = _link({"name": "int8"})
    data = _forge(
        {"0.q": torch.ones(3, dtype=torch.int8), "0.scale": torch.tensor([float("inf")])},
        _header(link, [["w", [3], "torch.float32"]]),
    )
    with pytest.raises(PayloadError, match="tensor 'w'.*NaN or Inf"):
        link.decode(data)


def test_oversized_payload():
    small = build_link(CommConfig(uplink=[{"name": "identity"}]).uplink, max_payload_bytes=200)
    with pytest.raises(PayloadError, match="oversized"):
        small.decode(_payload())


def test_decompression_bomb_is_bounded():
    link = build_link(CommConfig(uplink=[{"name": "zstd"}]).uplink, max_payload_bytes=100_000)
    big = {"w": torch.zeros(1_000_000)}  # compresses to a few hundred bytes, 4 MB raw
    data = _link({"name": "zstd"}).encode(big, {})[0]
    assert len(data) < 100_000
    with pytest.raises(PayloadError, match="oversized"):
        link.decode(data)


def test_declared_tensor_sizes_are_bounded():
    link = build_link(CommConfig(uplink=[{"name": "topk", "fraction": 0.5}]).uplink, max_payload_bytes=10_000)
    data = _forge(
        {"0.indices": torch.zeros(1, dtype=torch.int32), "0.values": torch.zeros(1)},
        _header(link, [["w", [10**12], "torch.float32"]]),
    )
    with pytest.raises(PayloadError, match="oversized"):
        link.decode(data)


def test_chain_mismatch():
    with pytest.raises(PayloadError, match="codec chain"):
        _link({"name": "fp16"}).decode(_payload(_link({"name": "int8"})))
    with pytest.raises(PayloadError, match="byte codec id 1"):
        _link().decode(_payload(_link({"name": "zstd"})))


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"0.indices": torch.tensor([0, 99], dtype=torch.int32), "0.values": torch.ones(2)}, "outside"),
        ({"0.indices": torch.tensor([0, -1], dtype=torch.int32), "0.values": torch.ones(2)}, "outside"),
        ({"0.indices": torch.tensor([0, 1], dtype=torch.int64), "0.values": torch.ones(2)}, "dtype"),
        ({"0.indices": torch.tensor([0], dtype=torch.int32), "0.values": torch.ones(1)}, "entries"),
        ({"0.values": torch.ones(2)}, "parts"),
        (
            {
                "0.indices": torch.tensor([0, 1], dtype=torch.int32),
                "0.values": torch.ones(2),
                "7.x": torch.ones(1),
            },
            "belongs to no declared tensor",
        ),
    ],
)
def test_malformed_parts(parts, message):
    link = _link({"name": "topk", "fraction": 0.5})
    with pytest.raises(PayloadError, match=message):
        link.decode(_forge(parts, _header(link, [["w", [4], "torch.float32"]])))


@pytest.mark.parametrize(
    "entry",
    [["w", [-1], "torch.float32"], ["w", [4], "torch.complex64"], ["w", "4", "torch.float32"], "w"],
)
def test_malformed_header(entry):
    link = _link()
    with pytest.raises(PayloadError, match="malformed tensor entry"):
        link.decode(_forge({"0.values": torch.ones(4)}, _header(link, [entry])))


def test_duplicate_names_and_missing_header():
    link = _link()
    with pytest.raises(PayloadError, match="declared twice"):
        link.decode(
            _forge(
                {"0.values": torch.ones(1), "1.values": torch.ones(1)},
                _header(link, [["w", [1], "torch.float32"]] * 2),
            )
        )
    from fedmtl.comm.wire import tensors_to_bytes

    raw = tensors_to_bytes({"a": torch.ones(1)})
    head = struct.pack("<4sBBHQQ", MAGIC, 1, 0, 0, len(raw), len(raw))
    with pytest.raises(PayloadError, match="lacks the fedmtl header"):
        link.decode(head + struct.pack("<I", zlib.crc32(raw, zlib.crc32(head))) + raw)


def test_forged_checksum_with_garbage_body():
    data = bytearray(_payload())
    data[FRAME_BYTES + 2 : FRAME_BYTES + 10] = b"\xff" * 8
    with pytest.raises(PayloadError, match="tensor archive|header"):
        _link().decode(_refresh_crc(bytes(data)))


def test_unpack_exposes_the_self_describing_header():
    header, _ = unpack(_payload(_link({"name": "int8"})))
    assert header["chain"] == [{"name": "int8", "per_channel": False}]
    assert [t[0] for t in header["tensors"]] == list(X)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_payloads_only_ever_raise_payload_error(data):
    link = _link({"name": "topk", "fraction": 0.5}, {"name": "int8"}, {"name": "lz4"})
    payload = bytearray(_payload(link))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    fix = data.draw(st.booleans())
    blob = _refresh_crc(bytes(payload)) if fix else bytes(payload)
    try:
        out = link.decode(blob, expected=SHAPES)
    except PayloadError:
        return
    assert set(out) <= set(SHAPES) and all(torch.isfinite(v).all() for v in out.values())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_payload_error(blob):
    with pytest.raises(PayloadError):
        _link({"name": "zstd"}).decode(MAGIC + b"\x01\x01" + blob)


_PART_NAMES = st.sampled_from(
    ["0.values", "0.q", "0.scale", "0.indices", "0", "1.values", "0.x.y", ".", "values"]
)
_DTYPES = st.sampled_from([torch.float32, torch.float16, torch.int8, torch.int32, torch.int64, torch.uint8])
_ENTRY = st.one_of(
    st.tuples(
        st.sampled_from(["trunk.w", "head.b", "w"]),
        st.lists(st.integers(-2, 9), max_size=3),
        st.sampled_from(["torch.float32", "torch.int64", "torch.float64", "bogus"]),
    ).map(list),
    st.integers(),
    st.text(max_size=5),
    st.none(),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_PART_NAMES, st.tuples(_DTYPES, st.integers(0, 40)), max_size=4),
    st.lists(_ENTRY, max_size=3),
    st.sampled_from(["identity", "int8", "topk"]),
)
def test_forged_well_framed_payloads_only_ever_raise_payload_error(parts, entries, codec):
    """A sender that writes valid frames and checksums around arbitrary parts and headers."""
    link = _link({"name": codec, "fraction": 0.5} if codec == "topk" else {"name": codec})
    tensors = {k: (torch.arange(n) % 7).to(dt) for k, (dt, n) in parts.items()}
    data = _forge(tensors, _header(link, entries))
    try:
        out = link.decode(data, expected=SHAPES)
    except PayloadError:
        return
    assert set(out) <= set(SHAPES)


def test_aliased_and_viewed_tensors_serialise():
    """safetensors refuses tensors that share memory; a payload may hold one tensor twice or views of one buffer."""
    from fedmtl.comm.wire import bytes_to_tensors, tensors_to_bytes

    buffer = torch.arange(6.0)
    same = torch.ones(3)
    back = bytes_to_tensors(tensors_to_bytes({"a": same, "b": same, "lo": buffer[:3], "hi": buffer[3:]}))
    assert torch.equal(back["a"], same) and torch.equal(back["b"], same)
    assert torch.equal(back["lo"], torch.tensor([0.0, 1.0, 2.0])) and torch.equal(back["hi"], torch.tensor([3.0, 4.0, 5.0]))
