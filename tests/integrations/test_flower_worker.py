"""The warm ClientApp worker runs each task as flwr-clientapp would: the reply, or an error reply, then the status."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SubStatus

from fedmtl.integrations.flower import worker

pytestmark = pytest.mark.flower


class _Runtime:
    """Stands for the SuperNode's Runtime API: records what the worker pushes."""

    def __init__(self) -> None:
        self.pushed: list[Message] = []
        self.outputs: list[tuple[str, str]] = []
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def runtime(monkeypatch):
    rt = _Runtime()
    message = Message(RecordDict(), dst_node_id=1, message_type="train")
    message.metadata.__dict__["_message_id"] = "m1"
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    run = SimpleNamespace(fab_id="fedmtl/app", fab_version="1", run_id=1)
    fab = SimpleNamespace(hash_str="h" * 64, content=b"fab")
    monkeypatch.setattr(worker, "_client", lambda address, token: rt)
    monkeypatch.setattr(worker, "pull_task_input", lambda client: (message, context, run, fab))
    monkeypatch.setattr(worker, "push_message", lambda client, reply, ctx: rt.pushed.append(reply))
    monkeypatch.setattr(worker, "push_task_output", lambda client, ctx, status, details: rt.outputs.append((status, details)))
    monkeypatch.setattr(worker, "HeartbeatSender", lambda fn: SimpleNamespace(start=lambda: None, is_running=False))
    return rt


class _Apps:
    def __init__(self, app) -> None:
        self.app, self.loads = app, 0

    def get(self, fab_id, fab_version, fab_hash, content):
        self.loads += 1
        return self.app


def test_a_task_runs_in_process_and_its_reply_and_status_are_pushed(runtime):
    def app(message, context):
        return Message(RecordDict(), reply_to=message)

    assert worker.run_task("127.0.0.1:1", "token", _Apps(app)) == SubStatus.COMPLETED
    assert len(runtime.pushed) == 1 and not runtime.pushed[0].has_error()
    assert runtime.outputs == [(SubStatus.COMPLETED, "")] and runtime.closed == 1


def test_a_clientapp_that_raises_becomes_an_error_reply_and_the_worker_goes_on(runtime):
    def app(message, context):
        raise ValueError("message for client 2 reached the node of client 1")

    assert worker.run_task("127.0.0.1:1", "token", _Apps(app)) == SubStatus.FAILED
    (reply,) = runtime.pushed
    assert reply.has_error() and "reached the node of client 1" in reply.error.reason
    assert runtime.outputs[0][0] == SubStatus.FAILED and "ValueError" in runtime.outputs[0][1]


def test_each_fab_is_installed_and_loaded_once(monkeypatch):
    installed: list[bytes] = []
    loaded: list[str] = []
    monkeypatch.setattr(worker, "install_from_fab", lambda content, skip_prompt: installed.append(content))
    cache = worker.AppCache()
    monkeypatch.setattr(cache, "_load", lambda fab_id, version, fab_hash: loaded.append(fab_hash) or object())
    a = cache.get("fedmtl/app", "1", "a" * 64, b"A")
    assert cache.get("fedmtl/app", "1", "a" * 64, b"A") is a
    cache.get("fedmtl/app", "2", "b" * 64, b"B")
    assert installed == [b"A", b"B"] and loaded == ["a" * 64, "b" * 64]


def test_a_reply_that_cannot_be_pushed_fails_the_task_not_the_worker(runtime, monkeypatch):
    def refuse(client, reply, ctx):
        raise ConnectionError("SuperNode gone")

    monkeypatch.setattr(worker, "push_message", refuse)
    app = lambda message, context: Message(RecordDict(), reply_to=message)  # noqa: E731
    assert worker.run_task("127.0.0.1:1", "token", _Apps(app)) == SubStatus.FAILED
    assert runtime.outputs[0][0] == SubStatus.FAILED and "SuperNode gone" in runtime.outputs[0][1]
