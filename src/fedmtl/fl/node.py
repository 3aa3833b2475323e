"""A client node: what one client does with the bytes it receives, in simulation and in deployment.

Decode the broadcast (and the algorithm's server state, when there is one), train on its own data
and tasks, compute ``local - received`` for the parameters it shares, encode that (and the algorithm's
outbox) with its uplink codec state. The simulation's round loop and the Flower ClientApp both call
:meth:`ClientNode.upload`, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedmtl.comm import Link, ef21
from fedmtl.comm.delta import apply_delta, is_delta
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import Algorithm, with_server
from fedmtl.fl.algorithm_channel import decode_state, encode_tree, nest_names, unnest_names
from fedmtl.fl.client import LocalResult, LocalTrainer
from fedmtl.fl.client_state import DOWNLINK_COPY, OUTBOX, UPLINK, UPLINK_ESTIMATE, ClientState
from fedmtl.fl.layout import Layouts
from fedmtl.fl.seeding import generator
from fedmtl.mtl import MultiTaskModel
from fedmtl.tree import TensorTree, flatten


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back: the encoded update, the weights the server aggregates with, and the
    encoded outbox of algorithms with a server step that needs one (``b""`` otherwise)."""

    client_id: int
    payload: bytes
    num_samples: int
    task_samples: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)
    outbox: bytes = b""


class ClientNode:
    """The client side of a round, for one client at a time."""

    def __init__(
        self,
        model: MultiTaskModel,
        trainer: LocalTrainer,
        algorithm: Algorithm,
        down: Link,
        up: Link,
        seed: int,
        down_delta: Link | None = None,
        uplink_ef21: bool = False,
    ):
        self.model = model
        #: send the update as EF21's compressed change of an estimate kept on both sides (``comm.uplink_ef21``)
        self.uplink_ef21 = uplink_ef21
        #: the link of model differences (``comm.downlink_delta``); when set, a client keeps its last copy
        self.down_delta = down_delta
        self.trainer = trainer
        self.algorithm = algorithm
        self.down = down
        self.up = up
        self.seed = seed
        #: each task set's held and uploaded names, computed once
        self.layouts = Layouts(model, algorithm)

    def receive(self, payload: bytes, client: ClientData, copy: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Decode the broadcast; it must hold exactly the parameters this client trains and shares.

        A client that kept its last ``copy`` may receive the difference to it (``comm.downlink_delta``),
        which it adds to the copy; otherwise (or when the server sent the full model) the full model.
        """
        names = self.layouts.of(client).uploaded
        shapes = dict((n, p.shape) for n, p in self.model.named_parameters())
        expected = {n: shapes[n] for n in names}
        if copy is not None and self.down_delta is not None and is_delta(self.down_delta, payload):
            return apply_delta(self.down_delta, payload, copy, expected)
        return self.down.decode(payload, expected=expected)

    def receive_state(self, payload: bytes) -> TensorTree:
        """Decode this client's view of the algorithm's server state (``{}`` for an empty payload)."""
        return decode_state(self.down, payload)

    def train(self, start: Mapping[str, Tensor], client: ClientData, state: ClientState, round_index: int) -> LocalResult:
        gen = generator(self.seed, "client", round_index, client.client_id)
        return self.algorithm.local_train(self.trainer, start, client, state, gen)

    def upload(
        self,
        start: Mapping[str, Tensor],
        result: LocalResult,
        client: ClientData,
        round_index: int,
        tamper: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        prior: ClientState | None = None,
    ) -> tuple[ClientReply, ClientState]:
        """Encode ``local - start`` for the shared parameters, and the algorithm's outbox if training returned
        one; returns the reply and the client's next state (without the server's view).

        ``prior`` is the client's state at the start of the round: what local training does not return
        carries over from it (:meth:`ClientState.over`). The codec slot is this node's: the uplink
        codec's error-feedback residuals, the outbox chain's, the downlink copy and the EF21 estimate.
        ``tamper`` replaces the update before encoding: how the simulation plays a Byzantine client.
        """
        names = self.layouts.of(client).uploaded
        delta = {n: result.params[n] - start[n] for n in names}
        if tamper is not None:
            delta = tamper(delta)
        before = prior or ClientState()
        codec = dict(before.codec)
        gen = generator(self.seed, "codec", round_index, client.client_id)
        if self.uplink_ef21:
            payload, codec_state, codec[UPLINK_ESTIMATE] = ef21.encode(self.up, delta, uplink_estimate(before), codec.get(UPLINK, {}), gen)
        else:
            payload, codec_state = self.up.encode(delta, codec.get(UPLINK, {}), gen)
        if self.up.stateful:
            codec[UPLINK] = codec_state
        if self.down_delta is not None:  # the copy the next difference will be taken against
            codec[DOWNLINK_COPY] = {n: start[n] for n in names}
        outbox_bytes = b""
        outbox = flatten(result.outbox)
        if outbox:
            gen = generator(self.seed, "codec-outbox", round_index, client.client_id)
            outbox_bytes, outbox_codec = encode_tree(self.up, outbox, unnest_names(codec.get(OUTBOX, {}), list(outbox)), gen)
            if self.up.stateful:  # kept nested: the outbox's names hold "/", which a checkpoint's keys may not
                codec[OUTBOX] = nest_names(outbox_codec)
        task_rows = {t: int(client.train.y[t].shape[0]) for t in client.tasks}
        reply = ClientReply(client.client_id, payload, client.num_train, task_rows, dict(result.metrics), outbox_bytes)
        return reply, result.state.over(before).with_codec(codec)

    def run(
        self,
        payload: bytes,
        client: ClientData,
        state: ClientState,
        round_index: int,
        state_payload: bytes = b"",
        base: Mapping[str, Tensor] | None = None,
    ) -> tuple[ClientReply, ClientState]:
        """The whole client round from received bytes: what a deployed client (the Flower ClientApp) executes.

        Args:
            base: values of the parameters the broadcast does not carry (other tasks' heads): the model
                needs them to run; a deployed node uses the initial parameters, as the simulation does.
        """
        start = {**(base or {}), **self.receive(payload, client, downlink_copy(state))}
        server = self.receive_state(state_payload)
        result = self.train(start, client, with_server(state, server), round_index)
        return self.upload(start, result, client, round_index, prior=state)


def downlink_copy(state: ClientState) -> dict[str, Tensor] | None:
    """The copy of the model this client kept at its last round (``comm.downlink_delta``), None without one."""
    copy: dict[str, Tensor] | None = state.codec.get(DOWNLINK_COPY)
    return copy


def uplink_estimate(state: ClientState) -> dict[str, Tensor] | None:
    """The client's EF21 estimate of its update (``comm.uplink_ef21``), None before its first upload."""
    estimate: dict[str, Tensor] | None = state.codec.get(UPLINK_ESTIMATE)
    return estimate


__all__ = ["ClientNode", "ClientReply", "downlink_copy", "torch", "uplink_estimate"]
