"""A client's update in flight (or arrived, waiting in the buffer), as a tensor tree for checkpoints.

The asynchronous driver trains a client when it dispatches it and holds the encoded reply until the
simulated moment it arrives; a checkpoint between two server steps must carry those replies (and each
client's next state) so that a resumed run aggregates exactly what the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedmtl.fl.client_state import ClientState
from fedmtl.fl.node import ClientReply
from fedmtl.tree import TensorTree, flatten, unflatten


def to_bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.zeros(0, dtype=torch.uint8)


@dataclass(frozen=True)
class InFlight:
    """One dispatched client.

    Attributes:
        version: the server step (model version) it trains on.
        start: when it was dispatched; ``end``: when it arrives, or, when ``drops``, when it goes offline.
        bytes_down: what it received (the model and the algorithm's state), for its timing.
        reply: what it uploads; ``state``: its next state, which it keeps only if its update arrives.
            Both ``None`` while it is not trained yet: then ``end`` is a lower bound (its time without the
            upload), unless ``drops`` (it goes offline before even that, and is never trained).
        repeat: how often it was dispatched at this version before (keys its training generator).
    """

    client: int
    version: int
    start: float
    end: float
    drops: bool
    bytes_down: int
    reply: ClientReply | None = None
    state: ClientState | None = None
    repeat: int = 0

    @property
    def pending(self) -> bool:
        """Dispatched but not trained yet (and not a certain dropout)."""
        return self.reply is None and not self.drops

    def to_tree(self) -> TensorTree:
        if self.pending:
            raise ValueError(f"client {self.client}'s update is not trained yet: a pending dispatch is never checkpointed")
        r = self.reply or ClientReply(self.client, b"", 0, {})
        return {
            "client": torch.tensor(self.client),
            "version": torch.tensor(self.version),
            "times": torch.tensor([self.start, self.end], dtype=torch.float64),
            "drops": torch.tensor(int(self.drops)),
            "bytes_down": torch.tensor(self.bytes_down),
            "payload": to_bytes_tensor(r.payload),
            "outbox": to_bytes_tensor(r.outbox),
            "num_samples": torch.tensor(r.num_samples),
            "task_samples": {t: torch.tensor(n) for t, n in r.task_samples.items()},
            # metric names hold "/" (loss/<task>): stored as the nested tree they flatten from
            "metrics": unflatten({k: torch.tensor(v, dtype=torch.float64) for k, v in r.metrics.items()}),
            "state": self.state.to_tree() if self.state is not None else {},
        }

    @classmethod
    def from_tree(cls, tree: TensorTree) -> InFlight:
        """Inverse of :meth:`to_tree` (the client state in the current layout, :meth:`ClientState.to_tree`)."""
        cid = int(tree["client"])
        reply = ClientReply(
            cid,
            bytes(tree["payload"].numpy().tobytes()),
            int(tree["num_samples"]),
            {t: int(n) for t, n in tree["task_samples"].items()},
            {k: float(v) for k, v in flatten(tree["metrics"]).items() if v.numel() == 1},
            bytes(tree["outbox"].numpy().tobytes()),
        )
        start, end = (float(x) for x in tree["times"])
        drops = bool(int(tree["drops"]))
        state = None if drops else ClientState.from_tree(tree["state"])
        return cls(cid, int(tree["version"]), start, end, drops, int(tree["bytes_down"]), None if drops else reply, state)


def entries_to_tree(entries: list[InFlight]) -> TensorTree:
    """A list of entries as a tree keyed by position (zero-padded, so a checkpoint's sorted keys keep the order)."""
    return {f"{i:06d}": e.to_tree() for i, e in enumerate(entries)}


def entries_from_tree(tree: TensorTree) -> list[InFlight]:
    return [InFlight.from_tree(tree[k]) for k in sorted(tree)]


def upgrade_legacy_entries(systems: TensorTree) -> TensorTree:
    """A simulated system's state from a format-1 checkpoint with the client states its queued updates
    carry (``in_flight``, ``buffer``) converted from the flat layout (:meth:`ClientState.from_legacy`)."""
    out = dict(systems)
    for queue in ("in_flight", "buffer"):
        if isinstance(systems.get(queue), dict):
            out[queue] = {
                k: {**e, "state": ClientState.from_legacy(e["state"]).to_tree()} if isinstance(e, dict) and isinstance(e.get("state"), dict) else e
                for k, e in systems[queue].items()
            }
    return out
