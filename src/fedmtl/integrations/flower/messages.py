"""Conversion between fedmtl's values and Flower's records.

The update a client sends and the broadcast it receives cross the network as fedmtl's own encoded
bytes (the codec chain's output), carried as one ``uint8`` array in an ``ArrayRecord``: Flower moves
exactly the bytes fedmtl's byte accounting counts, so compression shrinks what crosses the wire. The
algorithm's server state and a client's outbox travel the same way, each in its own record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmtl.fl.node import ClientReply
from fedmtl.tree import TensorTree, flatten, unflatten

PAYLOAD = "fedmtl.payload"
META = "fedmtl.meta"
METRICS = "fedmtl.metrics"
CONFIG = "fedmtl.config"
SERVER_STATE = "fedmtl.server-state"  # the client's view of the algorithm's server state, encoded (SCAFFOLD's c)
OUTBOX = "fedmtl.outbox"  # a client's extra uploads for the algorithm's server step, encoded (SCAFFOLD's delta c)
EVAL = "fedmtl.eval"  # a node's personalised-evaluation metric sums
BASE = "copy-digest"  # in a train message's meta: the digest of the copy its model difference is taken against


class MessageFormatError(ValueError):
    """A record that does not hold what fedmtl expects; the message says what is missing."""


#: the longest JSON text a reply's metadata may carry (a task -> samples map)
MAX_JSON_CHARS = 1 << 16


def _field(record: Mapping[str, object], key: str, kind: type | tuple[type, ...], what: str) -> object:
    """``record[key]``, checked to be of ``kind`` (bools are not numbers); errors name the key and value."""
    if key not in record:
        raise MessageFormatError(f"{what} lacks {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise MessageFormatError(f"{what}'s {key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {str(value)[:60]!r}")
    return value


def _json(text: object, what: str) -> object:
    """Parse bounded JSON text; nesting too deep for the parser is a format error, not a crash."""
    if not isinstance(text, str) or len(text) > MAX_JSON_CHARS:
        raise MessageFormatError(f"{what} must be JSON text of at most {MAX_JSON_CHARS} characters")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MessageFormatError(f"{what} is not valid JSON ({type(exc).__name__})") from None


def _number_map(value: object, what: str) -> dict[str, float | int]:
    """A JSON object of task -> number (the claims' bounds are the server's business, not the parser's)."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()
    ):
        raise MessageFormatError(f"{what} must map task names to numbers, got {str(value)[:80]!r}")
    return dict(value)


def payload_record(payload: bytes) -> ArrayRecord:
    """Bytes as a single uint8 array."""
    return ArrayRecord({"bytes": Array(np.frombuffer(payload, dtype=np.uint8).copy())})


def payload_from_record(record: ArrayRecord) -> bytes:
    if not isinstance(record, ArrayRecord) or "bytes" not in record:
        raise MessageFormatError("payload record has no 'bytes' array")
    try:
        arr = record["bytes"].numpy()
    except Exception as exc:  # a crafted Array whose bytes numpy cannot read
        raise MessageFormatError(f"payload array does not read ({type(exc).__name__})") from None
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise MessageFormatError(f"payload array must be 1-D uint8, got {arr.dtype} with shape {arr.shape}")
    return arr.tobytes()


def tree_to_record(tree: Mapping[str, object]) -> ArrayRecord:
    """A tensor tree (client state) as an ArrayRecord keyed by flattened paths."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in flatten(tree).items()})


def tree_from_record(record: ArrayRecord) -> TensorTree:
    return unflatten({k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()})


def train_content(
    payload: bytes, round_index: int, client_id: int, state_payload: bytes = b"", base: str = ""
) -> RecordDict:
    """What the server sends a client for one round; ``state_payload`` (when not empty) is the client's view
    of the algorithm's server state, encoded by the downlink chain (:attr:`RoundPlan.state_payloads`);
    ``base`` (when not empty) says the payload is a model difference against the copy with that
    :func:`~fedmtl.comm.delta.copy_digest` (``comm.downlink_delta``)."""
    meta = ConfigRecord({"round": round_index, "client-id": client_id})
    if base:
        meta[BASE] = base
    content = RecordDict({PAYLOAD: payload_record(payload), META: meta})
    if state_payload:
        content[SERVER_STATE] = payload_record(state_payload)
    return content


def read_train_content(content: RecordDict) -> tuple[bytes, int, int]:
    if PAYLOAD not in content.array_records or META not in content.config_records:
        raise MessageFormatError("train message lacks the fedmtl payload or meta record")
    meta = content.config_records[META]
    return payload_from_record(content.array_records[PAYLOAD]), int(meta["round"]), int(meta["client-id"])  # type: ignore[arg-type]


def read_base(content: RecordDict) -> str:
    """The digest of the copy a train message's model difference is taken against (``""``: a full model)."""
    meta = content.config_records.get(META)
    if meta is None or BASE not in meta:
        return ""
    return str(_field(meta, BASE, str, "train meta"))


def read_server_state(content: RecordDict) -> bytes:
    """The encoded algorithm server state a train message carries (``b""`` when it carries none)."""
    record = content.array_records.get(SERVER_STATE)
    return payload_from_record(record) if record is not None else b""


def reply_content(reply: ClientReply) -> RecordDict:
    """A client's reply: its encoded update, the weights the server aggregates with, its metrics, and
    (for algorithms with a server step that needs them) its encoded outbox in a second record."""
    meta = ConfigRecord(
        {
            "client-id": reply.client_id,
            "num-samples": reply.num_samples,
            "task-samples": json.dumps(reply.task_samples),
        }
    )
    content = RecordDict(
        {
            PAYLOAD: payload_record(reply.payload),
            META: meta,
            METRICS: MetricRecord({k: float(v) for k, v in reply.metrics.items()}),
        }
    )
    if reply.outbox:
        content[OUTBOX] = payload_record(reply.outbox)
    return content


def read_reply_content(content: RecordDict) -> ClientReply:
    """A client's reply, every field checked; anything malformed raises :class:`MessageFormatError`."""
    if PAYLOAD not in content.array_records or META not in content.config_records:
        raise MessageFormatError("reply lacks the fedmtl payload or meta record")
    meta = content.config_records[META]
    metrics = content.metric_records.get(METRICS, MetricRecord({}))
    values = {k: v for k, v in metrics.items()}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
        raise MessageFormatError("reply metrics must be numbers")
    samples = _field(meta, "num-samples", (int, float), "reply meta")
    return ClientReply(
        client_id=_field(meta, "client-id", int, "reply meta"),  # type: ignore[arg-type]
        payload=payload_from_record(content.array_records[PAYLOAD]),
        num_samples=samples,  # type: ignore[arg-type]  # bounded by the server (Federation.collect)
        task_samples=_number_map(_json(meta.get("task-samples"), "reply meta 'task-samples'"), "reply meta 'task-samples'"),  # type: ignore[arg-type]
        metrics={k: float(v) for k, v in values.items()},  # type: ignore[arg-type]
        outbox=payload_from_record(content.array_records[OUTBOX]) if OUTBOX in content.array_records else b"",
    )


def evaluate_content(
    payload: bytes, round_index: int, client_id: int, state_payload: bytes = b"", base: str = ""
) -> RecordDict:
    """The personalised-evaluation request: the global parameters (and the algorithm's server state) the client
    holds, as a train message carries them."""
    return train_content(payload, round_index, client_id, state_payload, base)


def evaluate_reply(client_id: int, sums: Mapping[str, Mapping[str, float]]) -> RecordDict:
    """A node's personalised-evaluation answer: additive metric sums per task (``task/statistic`` keys)."""
    flat = MetricRecord({f"{t}/{k}": float(v) for t, stats in sums.items() for k, v in stats.items()})
    return RecordDict({META: ConfigRecord({"client-id": client_id}), EVAL: flat})


def read_evaluate_reply(content: RecordDict) -> tuple[int, dict[str, dict[str, float]]]:
    if META not in content.config_records or EVAL not in content.metric_records:
        raise MessageFormatError("evaluation reply lacks its meta or metric-sums record")
    sums: dict[str, dict[str, float]] = {}
    for key, value in content.metric_records[EVAL].items():
        task, sep, stat = key.rpartition("/")
        if not sep:
            raise MessageFormatError(f"metric-sums key {key!r} is not 'task/statistic'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageFormatError(f"metric sum {key!r} must be a number")
        sums.setdefault(task, {})[stat] = float(value)
    return _field(content.config_records[META], "client-id", int, "evaluation meta"), sums  # type: ignore[return-value]


def register_content(experiment_json: str, run_key: str = "") -> RecordDict:
    """The registration query: the resolved experiment config every node builds its side from, and the
    run's key (the same across resumptions of one run, new for a fresh run: the clients' saved state is
    kept under it, so a fresh run never picks up an older run's state)."""
    return RecordDict({CONFIG: ConfigRecord({"experiment": experiment_json, "run-key": run_key})})


def registration_reply(client_id: int, tasks: list[str] | tuple[str, ...], num_samples: int) -> RecordDict:
    return RecordDict(
        {
            META: ConfigRecord(
                {"client-id": client_id, "tasks": json.dumps(list(tasks)), "num-samples": num_samples}
            )
        }
    )


def read_registration(content: RecordDict) -> tuple[int, tuple[str, ...], int]:
    if META not in content.config_records:
        raise MessageFormatError("registration reply lacks its meta record")
    meta = content.config_records[META]
    tasks = _json(meta.get("tasks"), "registration 'tasks'")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise MessageFormatError(f"registration 'tasks' must be a list of task names, got {str(tasks)[:80]!r}")
    samples = _field(meta, "num-samples", int, "registration meta")
    if samples < 0:  # type: ignore[operator]
        raise MessageFormatError(f"registration 'num-samples' must be >= 0, got {samples}")
    return _field(meta, "client-id", int, "registration meta"), tuple(tasks), samples  # type: ignore[return-value]


def wire_bytes(message: Message) -> int:
    """Bytes of a message as Flower serialises it for the network: the message and every nested record/array."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


__all__ = [
    "MessageFormatError",
    "evaluate_content",
    "evaluate_reply",
    "read_base",
    "read_evaluate_reply",
    "read_server_state",
    "payload_from_record",
    "payload_record",
    "read_registration",
    "read_reply_content",
    "read_train_content",
    "register_content",
    "registration_reply",
    "reply_content",
    "train_content",
    "tree_from_record",
    "tree_to_record",
    "wire_bytes",
]
