"""On Flower, any malformed reply drops that node, never the run (issue 17): crafted metadata, deep JSON
nesting, inflated claims, payload and outbox bombs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable

import pytest
from _flower_fakes import SMALL, FakeClock, FakeGrid
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.comm import build_link
from fedmtl.config import config_from_dict
from fedmtl.fl.byzantine import payload_bomb
from fedmtl.fl.node import ClientReply
from fedmtl.integrations.flower import FlowerSettings, make_client_app
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower.server_app import server_for

pytestmark = pytest.mark.flower

DEEP = "[" * 100_000 + "]" * 100_000


def _reply() -> RecordDict:
    return msgs.reply_content(ClientReply(1, b"payload", 40, {"digit": 40}, {"loss/digit": 0.5}))


def _with_meta(content: RecordDict, **meta) -> RecordDict:
    old = dict(content.config_records[msgs.META])
    content.config_records[msgs.META] = ConfigRecord({**old, **meta})
    return content


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"task-samples": ["digit", "40"]}, "task-samples"),
        ({"task-samples": DEEP}, "JSON text of at most"),
        ({"task-samples": "[" * 5000 + "]" * 5000}, "not valid JSON|must map"),
        ({"task-samples": json.dumps({"digit": [1, 2]})}, "must map task names to numbers"),
        ({"task-samples": json.dumps({"digit": {"a": {"b": 1}}})}, "must map task names to numbers"),
        ({"num-samples": "forty"}, "'num-samples' must be"),
        ({"num-samples": [1, 2]}, "'num-samples' must be"),
        ({"client-id": 1.5}, "'client-id' must be int"),
        ({"client-id": True}, "'client-id' must be int"),
    ],
)
def test_crafted_reply_metadata_is_a_format_error(meta, message):
    with pytest.raises(msgs.MessageFormatError, match=message):
        msgs.read_reply_content(_with_meta(_reply(), **meta))


def test_non_numeric_metrics_and_missing_fields_are_format_errors():
    content = _reply()
    content.metric_records[msgs.METRICS] = MetricRecord({"loss/digit": [1.0, 2.0]})
    with pytest.raises(msgs.MessageFormatError, match="metrics must be numbers"):
        msgs.read_reply_content(content)
    content = _reply()
    content.config_records[msgs.META] = ConfigRecord({"client-id": 1})
    with pytest.raises(msgs.MessageFormatError, match="lacks 'num-samples'"):
        msgs.read_reply_content(content)


@pytest.mark.parametrize("meta", [{"tasks": DEEP}, {"tasks": json.dumps([1, 2])}, {"num-samples": -5}, {"num-samples": 1e40}, {"client-id": "0"}])
def test_crafted_registrations_are_format_errors(meta):
    content = msgs.registration_reply(0, ["digit"], 10)
    with pytest.raises(msgs.MessageFormatError):
        msgs.read_registration(_with_meta(content, **meta))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["client-id", "num-samples", "task-samples", "x"]),
        st.one_of(st.integers(), st.floats(), st.text(max_size=30), st.booleans(), st.lists(st.integers(), max_size=3), st.binary(max_size=5)),
    )
)
def test_any_reply_metadata_reads_or_is_a_format_error(meta):
    try:
        reply = msgs.read_reply_content(_with_meta(_reply(), **meta))
    except msgs.MessageFormatError:
        return
    assert isinstance(reply.client_id, int) and isinstance(reply.task_samples, dict)


# -- whole runs ----------------------------------------------------------------------------------------
class HostileGrid(FakeGrid):
    """A FakeGrid whose node ``hostile`` rewrites its training replies with ``corrupt``."""

    def __init__(self, corrupt: Callable[[RecordDict], RecordDict], hostile: int = 102):
        super().__init__(make_client_app(), {101: 0, 102: 1, 103: 2})
        self.corrupt, self.hostile = corrupt, hostile

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for m, mid in zip(messages, ids):
            if m.metadata.dst_node_id == self.hostile and m.metadata.message_type == "train" and mid in self.replies:
                reply = self.replies[mid]
                reply.content = self.corrupt(reply.content)  # type: ignore[misc]
        return ids


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(tmp_path_factory.getbasetemp() / "partition-cache"))


def _run(tmp_path, grid):
    data = copy.deepcopy(SMALL)
    data["server"]["rounds"] = 2
    data["output"]["dir"] = str(tmp_path)
    clock = FakeClock()
    server = server_for(config_from_dict(data), FlowerSettings(min_nodes=3, min_replies=2), grid, tmp_path / "run", clock=clock, sleep=clock.sleep)
    summary = server.run()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return server, summary, history


def _bomb_outbox(content: RecordDict) -> RecordDict:
    link = build_link(None)
    content[msgs.OUTBOX] = msgs.payload_record(payload_bomb(link, ["trunk.net.0.weight", "trunk.net.0.bias"]))
    return content


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda c: _with_meta(c, **{"task-samples": DEEP}), "JSON text"),
        (lambda c: _with_meta(c, **{"task-samples": ["digit"]}), "task-samples"),
        (_bomb_outbox, "shape|oversized"),
        (lambda c: c.__setitem__(msgs.PAYLOAD, msgs.payload_record(payload_bomb(build_link(None), ["trunk.net.0.weight"]))) or c, "shape"),
    ],
    ids=["deep-json", "list-task-samples", "outbox-bomb", "payload-bomb"],
)
def test_a_hostile_node_is_dropped_with_its_reason_and_the_run_completes(tmp_path, corrupt, reason):
    import re

    _, summary, history = _run(tmp_path, HostileGrid(corrupt))
    assert summary["rounds_completed"] == 2
    assert all(h["replies"] == 2 and re.search(reason, h["dropped"]["1"]) for h in history)


def test_an_inflated_claim_on_flower_is_bounded_by_the_registration(tmp_path, caplog):
    server, summary, history = _run(tmp_path, HostileGrid(lambda c: _with_meta(c, **{"num-samples": 1e40, "task-samples": json.dumps({"digit": 1e12})})))
    assert summary["rounds_completed"] == 2 and all(not h["dropped"] for h in history)
    assert any("num_samples 1e+40 clamped to" in r.getMessage() for r in caplog.records)
    assert server.fed.known_samples[1] > 0
