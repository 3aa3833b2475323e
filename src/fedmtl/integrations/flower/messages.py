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
STATE = "fedmtl.client-state"
SERVER_STATE = "fedmtl.server-state"  # the client's view of the algorithm's server state, encoded (SCAFFOLD's c)
OUTBOX = "fedmtl.outbox"  # a client's extra uploads for the algorithm's server step, encoded (SCAFFOLD's delta c)
EVAL = "fedmtl.eval"  # a node's personalised-evaluation metric sums


class MessageFormatError(ValueError):
    """A record that does not hold what fedmtl expects; the message says what is missing."""


def payload_record(payload: bytes) -> ArrayRecord:
    """Bytes as a single uint8 array."""
    return ArrayRecord({"bytes": Array(np.frombuffer(payload, dtype=np.uint8).copy())})


def payload_from_record(record: ArrayRecord) -> bytes:
    if "bytes" not in record:
        raise MessageFormatError("payload record has no 'bytes' array")
    arr = record["bytes"].numpy()
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise MessageFormatError(f"payload array must be 1-D uint8, got {arr.dtype} with shape {arr.shape}")
    return arr.tobytes()


def tree_to_record(tree: Mapping[str, object]) -> ArrayRecord:
    """A tensor tree (client state) as an ArrayRecord keyed by flattened paths."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in flatten(tree).items()})


def tree_from_record(record: ArrayRecord) -> TensorTree:
    return unflatten({k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()})


def train_content(payload: bytes, round_index: int, client_id: int, state_payload: bytes = b"") -> RecordDict:
    """What the server sends a client for one round; ``state_payload`` (when not empty) is the client's view
    of the algorithm's server state, encoded by the downlink chain (:attr:`RoundPlan.state_payloads`)."""
    content = RecordDict(
        {PAYLOAD: payload_record(payload), META: ConfigRecord({"round": round_index, "client-id": client_id})}
    )
    if state_payload:
        content[SERVER_STATE] = payload_record(state_payload)
    return content


def read_train_content(content: RecordDict) -> tuple[bytes, int, int]:
    if PAYLOAD not in content.array_records or META not in content.config_records:
        raise MessageFormatError("train message lacks the fedmtl payload or meta record")
    meta = content.config_records[META]
    return payload_from_record(content.array_records[PAYLOAD]), int(meta["round"]), int(meta["client-id"])  # type: ignore[arg-type]


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
    if PAYLOAD not in content.array_records or META not in content.config_records:
        raise MessageFormatError("reply lacks the fedmtl payload or meta record")
    meta = content.config_records[META]
    metrics = content.metric_records.get(METRICS, MetricRecord({}))
    return ClientReply(
        client_id=int(meta["client-id"]),  # type: ignore[arg-type]
        payload=payload_from_record(content.array_records[PAYLOAD]),
        num_samples=int(meta["num-samples"]),  # type: ignore[arg-type]
        task_samples={k: int(v) for k, v in json.loads(str(meta["task-samples"])).items()},
        metrics={k: float(v) for k, v in metrics.items()},  # type: ignore[arg-type]
        outbox=payload_from_record(content.array_records[OUTBOX]) if OUTBOX in content.array_records else b"",
    )


def evaluate_content(payload: bytes, round_index: int, client_id: int, state_payload: bytes = b"") -> RecordDict:
    """The personalised-evaluation request: the global parameters (and the algorithm's server state) the client
    holds, as a train message carries them."""
    return train_content(payload, round_index, client_id, state_payload)


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
        sums.setdefault(task, {})[stat] = float(value)  # type: ignore[arg-type]
    return int(content.config_records[META]["client-id"]), sums  # type: ignore[arg-type]


def register_content(experiment_json: str) -> RecordDict:
    """The registration query: the resolved experiment config every node builds its side from."""
    return RecordDict({CONFIG: ConfigRecord({"experiment": experiment_json})})


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
    return int(meta["client-id"]), tuple(json.loads(str(meta["tasks"]))), int(meta["num-samples"])  # type: ignore[arg-type]


def wire_bytes(message: Message) -> int:
    """Bytes of a message as Flower serialises it for the network: the message and every nested record/array."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


__all__ = [
    "MessageFormatError",
    "evaluate_content",
    "evaluate_reply",
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
