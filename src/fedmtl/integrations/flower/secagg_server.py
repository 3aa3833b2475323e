"""The server's side of secure aggregation over Flower: the simulation's server stages, with messages between them.

One round (Bonawitz et al., CCS 2017, Fig. 4, semi-honest server; SecAgg+ graphs of Bell et al., CCS 2020):

0. the train message carries a fresh round id and the client's groups; each node trains, keeps its update and
   answers with its two X25519 public keys (:func:`~fedmtl.integrations.flower.secagg_client.withhold`);
1. share keys: each node gets its neighbours' keys, the groups' holders and t, and answers with its encrypted
   Shamir shares, which the server relays (:func:`~fedmtl.privacy.secagg.protocol.relay`). A node that does
   not answer is a dropout before sharing: the others share again among themselves (a new graph);
2. masked input: each node gets its shares and the public plan of the quantisation and answers with its
   masked ring vectors; who answers are the survivors (at least t, else the round is abandoned);
3. unmask: each survivor reveals shares; the server removes the masks
   (:func:`~fedmtl.privacy.secagg.protocol.unmask_sums`) and finishes the round as the simulation does
   (:func:`~fedmtl.privacy.round.finish_round`): DP server noise, means, accounting.

The server never holds a client's update, only the masked vectors and the per-group sums. A round that
cannot complete raises :class:`~fedmtl.privacy.secagg.protocol.SecAggError` (with who dropped and why):
``Federation.apply`` abandons that round and the run goes on with the next.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flwr.app import Message, RecordDict

from fedmtl.fl.algorithm import FedAvg
from fedmtl.fl.federation import Federation, ServerState
from fedmtl.fl.node import ClientReply
from fedmtl.fl.privacy_step import PrivateAggregate
from fedmtl.fl.seeding import generator
from fedmtl.fl.update import ClientUpdate, bound_claims
from fedmtl.integrations.flower import secagg_messages as sm
from fedmtl.privacy.round import COUNT_GROUP, finish_round, noise_shares_for
from fedmtl.privacy.secagg.aggregate import decode_sum, ring_bounds
from fedmtl.privacy.secagg.protocol import (
    Advertisement,
    EncryptedShare,
    ProtocolStats,
    Reveal,
    SecAggError,
    relay,
    require_survivors,
    setup_round,
    unmask_sums,
)

log = logging.getLogger("fedmtl")


class Answers(Protocol):
    """What :func:`~fedmtl.integrations.flower.strategy.exchange` returns (the part used here)."""

    @property
    def replies(self) -> Mapping[int, Message]: ...
    @property
    def failed(self) -> Mapping[int, str]: ...
    @property
    def timed_out(self) -> Sequence[int]: ...
    @property
    def wire_down(self) -> int: ...
    @property
    def wire_up(self) -> int: ...


#: send ``{node: content}`` as ``message_type`` in message group ``group``, wait for the answers
Send = Callable[[dict[int, RecordDict], str, str], Answers]


def refusal(fed: Federation) -> str:
    """Why secure aggregation cannot run on Flower for this federation ("" when it can)."""
    own = [k.__name__ for k in type(fed.algorithm).__mro__ if "server_update" in vars(k) and k is not FedAvg]
    if own:
        return (
            f"algorithm {fed.cfg.algorithm.name!r} has a server step that reads each client's update or outbox "
            f"({own[0]}.server_update); under secure aggregation the server holds only the per-group sums. "
            "Use an algorithm whose server step needs only the aggregate (fedavg, fedprox, ditto, ...)."
        )
    return ""


def client_groups(fed: Federation, cid: int) -> list[str]:
    """The parameter groups client ``cid`` uploads whole (plus DP's count group under adaptive clipping)."""
    up = set(fed.algorithm.uploaded_names(fed.model, fed.data.clients[cid]))
    groups = [g for g, names in fed.groups.items() if names and all(n in up for n in names)]
    dp = fed.privacy.dp if fed.privacy is not None else None
    return groups + ([COUNT_GROUP] if dp is not None and dp.adaptive is not None else [])


@dataclass
class SecureRound:
    """One round's secure aggregation on the server: created before the train message goes out.

    Args:
        fed: the server's federation (groups, shapes, the privacy step).
        round_index: the round (0-based).
        nodes: client id -> node id of the cohort.
        send: how a stage's messages go out and come back (the strategy's ``exchange``).
    """

    fed: Federation
    round_index: int
    nodes: Mapping[int, int]
    send: Send
    round_id: bytes = field(default_factory=lambda: os.urandom(16))
    adverts: dict[int, Advertisement] = field(default_factory=dict)
    groups: dict[int, list[str]] = field(default_factory=dict)
    #: bytes of the protocol's own messages (share keys, masked input, unmask) as Flower serialises them
    wire_down: int = 0
    wire_up: int = 0

    def __post_init__(self) -> None:
        sa = self.fed.cfg.privacy.secure_aggregation
        if sa is None or self.fed.privacy is None:
            raise ValueError("SecureRound needs privacy.secure_aggregation in the config")
        self.cfg = sa
        self.groups = {c: client_groups(self.fed, c) for c in self.nodes}

    # -- stage 0, with the train message --------------------------------------------------------------
    def offer(self, contents: Mapping[int, RecordDict]) -> None:
        """Add the round id and the client's groups to each train message (node id -> content)."""
        client_of = {n: c for c, n in self.nodes.items()}
        for n, content in contents.items():
            sm.offer(content, self.round_id, self.groups[client_of[n]], self.cfg.bits)

    def collect(
        self, replies: Sequence[ClientReply], contents: Mapping[int, RecordDict]
    ) -> tuple[list[ClientUpdate], dict[int, str]]:
        """The train replies as updates without their (withheld) deltas: claims bounded as ``Federation.collect``
        bounds them, public keys kept for the next stage. A reply carrying an update is refused: the server
        must never receive one."""
        updates, dropped = [], {}
        for reply in replies:
            c = reply.client_id
            client = self.fed.data.clients[c]
            try:
                if reply.payload:
                    raise ValueError("it sent its update in the clear under secure aggregation")
                if reply.outbox:
                    raise ValueError("it sent an outbox, which secure aggregation does not carry")
                self.adverts[c] = sm.read_advert(contents[c], c)
                num, tasks, notes = bound_claims(reply.num_samples, reply.task_samples, *self.fed.claim_bounds(client))
            except ValueError as exc:
                dropped[c] = str(exc)
                continue
            for note in notes:
                log.warning("client %d's claim bounded: %s", c, note)
            updates.append(ClientUpdate(c, {}, num, tasks, reply.metrics, {}))
        return updates, dropped

    # -- stages 1-3: Federation.apply calls this as its aggregate ---------------------------------------
    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> PrivateAggregate:
        t0 = time.perf_counter()
        step = self.fed.privacy
        assert step is not None
        gen = generator(self.fed.cfg.seed, "privacy", state.round)
        dropped: dict[int, str] = {}

        def fail(exc: SecAggError) -> SecAggError:
            exc.dropped = tuple(sorted(dropped))
            exc.reasons = dict(dropped)
            return exc

        def ask(contents: dict[int, RecordDict], kind: str, stage: str) -> dict[int, RecordDict]:
            ex = self.send({self.nodes[c]: v for c, v in contents.items()}, kind, f"{self.round_index + 1}-{stage}")
            self.wire_down += ex.wire_down
            self.wire_up += ex.wire_up
            client_of = {n: c for c, n in self.nodes.items()}
            for n, why in ex.failed.items():
                dropped[client_of[n]] = f"secure aggregation, {stage}: {why}"
            for n in ex.timed_out:
                dropped[client_of[n]] = f"secure aggregation, {stage}: no answer"
            return {client_of[n]: m.content for n, m in ex.replies.items()}

        byid = {u.client_id: u for u in updates}
        alive = sorted(c for c in byid if c in self.adverts)
        # stage 1: share keys; a node that does not share is gone before masking: the rest share again
        while True:
            if len(alive) < 2:
                raise fail(SecAggError(f"{len(alive)} client(s) left to share keys; secure aggregation needs 2"))
            try:
                setup = setup_round({c: self.groups[c] for c in alive}, self.cfg, gen)
            except ValueError as exc:
                raise fail(SecAggError(str(exc))) from None
            got = ask(
                {c: sm.share_request({j: self.adverts[j] for j in setup.graph[c]}, setup.holders, setup.threshold) for c in alive},
                sm.SHARE,
                "share keys",
            )
            messages: list[EncryptedShare] = []
            for c, content in got.items():
                try:
                    messages += sm.read_shares_reply(content, c)
                except ValueError as exc:
                    dropped[c] = f"secure aggregation, share keys: {exc}"
            if not set(alive) - {c for c in got if c not in dropped}:
                break
            alive = sorted(c for c in got if c not in dropped)
            log.warning("round %d: secure aggregation: sharing keys again among %s", self.round_index + 1, alive)
        try:
            inbox = relay(messages, alive)
        except SecAggError as exc:
            raise fail(exc) from None
        # stage 2: masked inputs, quantised as the simulation quantises (public plan)
        counts = {g: len(h) for g, h in setup.holders.items()}
        shares = noise_shares_for({g: n for g, n in counts.items() if g != COUNT_GROUP}, self.fed.cfg.privacy)
        dp_state = step.decode_state(state.privacy_state) if step.dp is not None else None
        weighted = step.dp is None
        cap = float(max(self.fed.known_samples.values(), default=0)) or step.weight_cap
        cap = max(cap, 1.0)
        sizes = {g: 1 if g == COUNT_GROUP else sum(math.prod(self.fed.shapes[n]) for n in self.fed.groups[g]) for g in counts}
        clip = {g: 1.0 if g == COUNT_GROUP else self.cfg.clip_range for g in counts}
        bounds = {g: ring_bounds(sizes[g], counts[g], self.cfg, weighted=weighted, clip_range=clip[g]) for g in counts}

        def plan(c: int) -> sm.MaskPlan:
            groups = {
                g: {"names": [] if g == COUNT_GROUP else list(self.fed.groups[g]), "size": sizes[g], "holders": counts[g], "clip": clip[g]}
                for g in self.groups[c]
            }
            weights = {g: 1.0 if g == COUNT_GROUP else byid[c].weight_for(g) / cap for g in groups} if weighted else None
            return sm.MaskPlan(groups, weights, None if dp_state is None else dp_state.clip_norm, shares)

        got = ask({c: sm.mask_request(inbox[c], plan(c)) for c in alive}, sm.MASK, "masked input")
        masked = {}
        for c, content in got.items():
            try:
                masked[c] = sm.read_masked_reply(content, {g: bounds[g].lo.numel() for g in self.groups[c]}, self.cfg.bits)
            except ValueError as exc:
                dropped[c] = f"secure aggregation, masked input: {exc}"
        try:
            require_survivors(masked, setup.threshold)
        except SecAggError as exc:
            raise fail(exc) from None
        # stage 3: unmask
        got = ask({c: sm.unmask_request(sorted(masked), self.cfg.min_group_survivors) for c in masked}, sm.UNMASK, "unmask")
        reveals: list[Reveal] = []
        for c, content in got.items():
            try:
                reveals.append(sm.read_reveal(content, c))
            except ValueError as exc:
                log.warning("round %d: client %d's reveal is malformed: %s", self.round_index + 1, c, exc)
        t_server = time.perf_counter()
        try:
            ring, contributors, withheld = unmask_sums(masked, reveals, setup, self.adverts, self.cfg, self.round_id)
        except SecAggError as exc:
            raise fail(exc) from None
        server_seconds = time.perf_counter() - t_server
        sums, weight_sums = {}, {}
        for g, total in ring.items():
            sums[g], w = decode_sum(total, len(contributors[g]), bounds[g])
            weight_sums[g] = float(len(contributors[g])) if w is None else w
        like = {n: self.fed.specs[n] for names in self.fed.groups.values() for n in names}
        res = finish_round(
            sums,
            weight_sums,
            contributors,
            holders=counts,
            noise_shares=shares,
            param_groups=self.fed.groups,
            like=like,
            dp=step.dp,
            dp_state=dp_state,
            generator=gen,
            withheld=withheld,
            stats=ProtocolStats(
                upload_bytes=self.wire_up / len(byid),
                download_bytes=self.wire_down / len(byid),
                server_seconds=server_seconds,
                total_seconds=time.perf_counter() - t0,
                neighbours=sum(len(v) for v in setup.graph.values()) / len(setup.graph),
            ),
            dropped=sorted(set(byid) - set(masked)),
        )
        out = step.report(res, state.privacy_state)
        return PrivateAggregate(out.mean, out.state, out.log, {c: dropped.get(c, "secure aggregation: no masked input") for c in res.dropped})


__all__ = ["SecureRound", "client_groups", "refusal"]
