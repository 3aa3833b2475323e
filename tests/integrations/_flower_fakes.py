"""Test doubles for the Flower tests: a fake clock and an in-process grid that drives the real ClientApp."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict

SMALL = {
    "seed": 0,
    "data": {
        "source": {"name": "mnist1d", "num_samples": 1200, "tasks": ["digit", "parity"]},
        "num_clients": 3,
        "partition": {"name": "iid"},
        "task_assignment": {
            "name": "explicit",
            "clients": {0: ["digit", "parity"], 1: ["digit"], 2: ["parity"]},
        },
    },
    "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [32]}},
    "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
    "server": {"rounds": 3},
    "evaluation": {"every": 1, "personalized": False},
    "output": {"plots": False},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeGrid:
    """A Grid whose nodes run the real ClientApp in process, each with its own Context.

    ``behaviour[node]`` may be ``"raise"`` (its ClientApp raises in training or evaluation: Flower sends an error reply),
    ``"silent"`` (never answers a training message) or ``"offline"`` (the SuperLink no longer lists it).
    With ``errors_as_replies``, an exception the real ClientApp raises comes back as an error reply.
    """

    app: Callable[[Message, Context], Message]
    partitions: dict[int, int]  # node id -> partition id
    behaviour: dict[int, str] = field(default_factory=dict)
    contexts: dict[int, Context] = field(default_factory=dict)
    replies: dict[str, Message] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)
    counter: int = 0
    #: a ClientApp that raises answers with an error reply (Flower's runtime) instead of failing the test
    errors_as_replies: bool = False

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.partitions if self.behaviour.get(n) != "offline"]

    def context(self, node: int) -> Context:
        if node not in self.contexts:
            cfg = {"partition-id": self.partitions[node], "num-partitions": len(self.partitions)}
            self.contexts[node] = Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={}
            )
        return self.contexts[node]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            self.counter += 1
            mid = f"m{self.counter}"
            m.metadata.__dict__["_message_id"] = mid
            self.sent.append(m)
            ids.append(mid)
            how = self.behaviour.get(m.metadata.dst_node_id)
            if how == "offline" or (how == "silent" and m.metadata.message_type == "train"):
                continue
            if how == "raise" and m.metadata.message_type in ("train", "evaluate"):
                self.replies[mid] = m.create_error_reply(
                    Error(code=1, reason="ClientApp raised: injected failure")
                )
                continue
            try:
                self.replies[mid] = self.app(m, self.context(m.metadata.dst_node_id))
            except Exception as exc:  # as Flower's runtime does, with errors_as_replies
                if not self.errors_as_replies:
                    raise
                self.replies[mid] = m.create_error_reply(Error(code=2, reason=f"ClientApp raised: {exc}"))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def simulate(cfg):  # noqa: ANN001, ANN201
    """The same experiment in simulation, its run folder named ``sim`` (what a deployment is checked against)."""
    from fedmtl.experiment import Experiment

    return Experiment(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "sim"})})).run(progress=False)


def round_records(run_dir: Path) -> list[dict]:
    """A run folder's ``metrics.jsonl``, one record per round."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def three_nodes() -> FakeGrid:
    """A grid of three real ClientApps: nodes 101-103 on partitions 0-2."""
    from fedmtl.integrations.flower import make_client_app

    return FakeGrid(make_client_app(), {101: 0, 102: 1, 103: 2}, {})


def serve(cfg, out: Path, grid: FakeGrid | None = None) -> dict:  # noqa: ANN001
    """``cfg`` run by the real ServerApp over ``grid`` (default :func:`three_nodes`) on a fake clock; returns
    its summary."""
    from fedmtl.integrations.flower import FlowerSettings
    from fedmtl.integrations.flower.server_app import server_for

    clock = FakeClock()
    grid = grid if grid is not None else three_nodes()
    settings = FlowerSettings(min_nodes=3, round_timeout=30.0, poll_interval=0.5)
    return server_for(cfg, settings, grid, out, clock=clock, sleep=clock.sleep).run()
