"""Message conversion and settings, without processes."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedmtl.fl.node import ClientReply
from fedmtl.integrations.flower import FlowerSettings
from fedmtl.integrations.flower import messages as msgs

pytestmark = pytest.mark.flower


def test_payload_bytes_cross_unchanged_as_one_uint8_array():
    payload = bytes(range(256)) * 3
    record = msgs.payload_record(payload)
    assert list(record) == ["bytes"]
    assert record["bytes"].dtype == "uint8" or "uint8" in str(record["bytes"].dtype)
    assert msgs.payload_from_record(record) == payload


def test_reply_round_trip():
    reply = ClientReply(
        4, b"\x00\x01payload", 37, {"digit": 37, "parity": 12}, {"loss/digit": 0.25, "steps": 3.0}
    )
    assert msgs.read_reply_content(msgs.reply_content(reply)) == reply


def test_train_content_round_trip():
    assert msgs.read_train_content(msgs.train_content(b"abc", 5, 2)) == (b"abc", 5, 2)


def test_client_state_tree_round_trip_keeps_empty_subtrees():
    tree = {
        "objective": {},
        "local": {"head.w": torch.randn(3, 2)},
        "codec": {"residual": {"x": torch.arange(4.0)}},
    }
    back = msgs.tree_from_record(msgs.tree_to_record(tree))
    assert back["objective"] == {}
    assert torch.equal(back["local"]["head.w"], tree["local"]["head.w"])
    assert torch.equal(back["codec"]["residual"]["x"], tree["codec"]["residual"]["x"])


def test_malformed_records_are_refused_with_a_reason():
    with pytest.raises(msgs.MessageFormatError, match="payload"):
        msgs.read_reply_content(RecordDict({}))
    bad = ArrayRecord({"bytes": ArrayRecord({"x": torch.ones(2)})["x"]})
    with pytest.raises(msgs.MessageFormatError, match="uint8"):
        msgs.payload_from_record(bad)


def test_wire_bytes_grow_with_the_payload():
    small = Message(msgs.train_content(b"x" * 100, 0, 0), dst_node_id=1, message_type="train")
    large = Message(msgs.train_content(b"x" * 100_100, 0, 0), dst_node_id=1, message_type="train")
    overhead = msgs.wire_bytes(small) - 100
    assert 0 < overhead < 2000
    assert msgs.wire_bytes(large) - msgs.wire_bytes(small) == pytest.approx(100_000, abs=64)


def test_settings_from_run_config():
    s = FlowerSettings.from_run_config(
        {"min-replies": 2, "round-timeout": 5.0, "overrides": "server.rounds=2; seed=3"}
    )
    assert s.min_replies == 2 and s.round_timeout == 5.0
    assert s.override_list() == ["server.rounds=2", "seed=3"]
    assert FlowerSettings(min_replies=1, min_fraction=0.5).required_replies(5) == 3
    with pytest.raises(ValueError, match="known keys"):
        FlowerSettings.from_run_config({"min-replys": 2})


def test_server_state_and_outbox_travel_as_extra_byte_records():
    content = msgs.train_content(b"abc", 1, 2, b"state-bytes")
    assert msgs.read_train_content(content) == (b"abc", 1, 2)
    assert msgs.read_server_state(content) == b"state-bytes"
    assert msgs.read_server_state(msgs.train_content(b"abc", 1, 2)) == b""  # FedAvg: no record at all
    assert msgs.SERVER_STATE not in msgs.train_content(b"abc", 1, 2, b"").array_records

    reply = ClientReply(2, b"xy", 5, {"digit": 5}, outbox=b"outbox-bytes")
    content = msgs.reply_content(reply)
    assert msgs.OUTBOX in content.array_records
    assert msgs.read_reply_content(content) == reply
    plain = ClientReply(2, b"xy", 5, {"digit": 5})
    assert msgs.OUTBOX not in msgs.reply_content(plain).array_records
    assert msgs.read_reply_content(msgs.reply_content(plain)).outbox == b""


def test_evaluation_reply_carries_metric_sums_per_task():
    sums = {"digit": {"n": 10.0, "loss": 4.5, "correct": 7.0}, "parity": {"n": 10.0, "loss": 2.0, "correct": 9.0}}
    cid, got = msgs.read_evaluate_reply(msgs.evaluate_reply(3, sums))
    assert cid == 3 and got == sums
    with pytest.raises(msgs.MessageFormatError, match="metric-sums"):
        msgs.read_evaluate_reply(RecordDict({}))
