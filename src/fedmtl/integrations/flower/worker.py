"""A warm ClientApp process: one long-running process per SuperNode runs every message of every run.

Flower's default (``flower-supernode --isolation subprocess``) starts a fresh ``flwr-clientapp``
process for each message, which imports torch and fedmtl and rebuilds the model: 1.5-3.4 s per
message on 2 cores, against 0.02-0.03 s of actual local training. ``flwr-clientapp`` itself runs one
task and exits (flwr 1.41), so the warm process is this module: started beside a SuperNode run with
``--isolation process``, it asks the SuperNode's Runtime API for ClientApp tasks (as Flower's
SuperExec does) and runs each one in process (as ``flwr-clientapp`` does), keeping the loaded app,
the model and the node's partition between messages (the app caches them by config)::

    flower-supernode --isolation process --port 9094 ... &
    python -m fedmtl.integrations.flower.worker --runtime-api-address 127.0.0.1:9094 --parent-pid $!

A task's failure becomes an error reply (as in ``flwr-clientapp``) and the worker carries on.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # type: ignore[attr-defined]
from flwr.proto.runtime_pb2 import (  # type: ignore[attr-defined]
    AcquireTaskRequest,  # type: ignore[attr-defined]
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

log = logging.getLogger("fedmtl")
READY = "fedmtl clientapp worker ready"


def _client(address: str, token: str | None) -> RuntimeHttpClient:
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")
    ]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API is the SuperNode's local port (as Flower's own SuperExec uses it)
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def pull_task_input(client: RuntimeHttpClient, backoff: float = 0.02) -> tuple[Message, Context, Run, Fab]:
    """The task's message, context, run and FAB, as ``flwr-clientapp`` pulls them, but polling for the
    message's objects from ``backoff`` seconds up (Flower's first retry is after 1 s).

    The SuperNode hands out the task before it has pulled the message's arrays from the SuperLink; a
    process that started cold never noticed, a warm one asks at once and would sleep a second per round.
    """
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
        res.task_id,
        res.run.run_id,
        res.context.node_id,
    )
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message for this task from the SuperNode's Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=backoff,
        backoff_cap=1.0,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp: the id is the tree's
    return message, context, run, fab


class AppCache:
    """The ClientApp of each FAB, installed and imported once (what a fresh process would redo per message)."""

    def __init__(self) -> None:
        self._apps: dict[str, ClientApp] = {}
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def get(self, fab_id: str, fab_version: str, fab_hash: str, content: bytes) -> ClientApp:
        if fab_hash not in self._apps:
            install_from_fab(content, skip_prompt=True)
            self._apps[fab_hash] = self._load(fab_id, fab_version, fab_hash)
            log.info("loaded the ClientApp of %s %s (FAB %s)", fab_id, fab_version, fab_hash[:12])
        return self._apps[fab_hash]


def run_task(address: str, token: str, apps: AppCache) -> str:
    """Run one ClientApp task as ``flwr-clientapp`` would, in this process; returns its sub-status."""
    client = _client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, run, fab = pull_task_input(client)
        app = apps.get(run.fab_id, run.fab_version, fab.hash_str, fab.content)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # as flwr-clientapp: the exception becomes an error reply
        code = (
            ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            if isinstance(exc, LoadClientAppError)
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        )
        details = f"{type(exc)}:<'{exc}'>"
        log.error("ClientApp raised: %s", details, exc_info=exc)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as exc:  # as flwr-clientapp: logged, the task failed, the worker goes on
            log.error("could not push the reply to the SuperNode: %s", exc, exc_info=exc)
            status, details = SubStatus.FAILED, f"pushing the reply failed: {exc}"
        finally:
            push_task_output(client, context, status, details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return str(status)


def serve(
    address: str,
    poll: float = 0.1,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Acquire ClientApp tasks from the SuperNode at ``address`` and run them, one at a time, until stopped."""
    apps = AppCache()
    control = _client(address, None)
    log.info("%s (Runtime API %s)", READY, address)
    try:
        while not should_stop():
            try:
                res = control.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except httpx.TransportError:  # the SuperNode is not listening (yet, or any more): ask again
                sleep(max(poll, 0.5))
                continue
            except Exception as exc:  # an HTTP error from the Runtime API: said, and asked again
                log.warning("asking the SuperNode for a task failed: %s", exc)
                sleep(max(poll, 1.0))
                continue
            if res.HasField("task") and res.token:
                t0 = time.perf_counter()
                status = run_task(address, res.token, apps)
                log.info("task %d: %s in %.3f s", res.task.task_id, status, time.perf_counter() - t0)
                continue  # another message may be waiting already
            sleep(poll)
    finally:
        control.close()


def _preload() -> None:
    """Import torch and fedmtl's ClientApp now, not on the first round's clock."""
    import fedmtl.integrations.flower.client_app  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port (its --port)"
    )
    ap.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits"
    )
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between task requests when idle")
    args = ap.parse_args(argv)
    if args.poll <= 0:
        ap.error(f"--poll must be > 0, got {args.poll}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s fedmtl-worker: %(message)s")
    for chatty in ("httpx", "httpcore"):  # one line per poll would flood the log (and look like progress)
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # SIGINT to this process when the SuperNode dies
    _preload()
    try:
        serve(args.runtime_api_address, args.poll)
    except KeyboardInterrupt:
        log.info("worker stopped")


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["READY", "AppCache", "main", "run_task", "serve"]
