"""Compressed downlinks on Flower: the server's mirror of each client's last copy.

In simulation the server reads each client's copy from the client's state; a deployed server cannot, so it
keeps its own mirror (``comm.downlink_delta``, :mod:`fedmtl.comm.delta`): after a round, the copy of every
client that answered is what that client decoded from its payload, which the server decodes the same way
(bit for bit: the same bytes through the same arithmetic). The mirrors live where the simulation keeps the
copies, the codec slot of ``ServerState.client_states[cid]`` (:func:`fedmtl.fl.node.downlink_copy`), so :meth:`Federation.plan` sends differences
against them unchanged, the same bytes as the simulation, and they are saved in every checkpoint: a restarted
server resumes sending differences. Memory: one copy of the parameters each client holds (its shared trunk
and its own heads), for the clients that have answered at least once, never more than the federation, and
at most ``FlowerSettings.downlink_mirrors`` copies when that is set (the most recently sent are kept).

A client that did not answer (error, time-out, offline) may or may not have kept what it was sent, so its
mirror is forgotten and it receives the full model next time; every difference carries the digest of the
copy it is taken against (:func:`fedmtl.comm.delta.copy_digest`), and a node whose copy differs refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import torch
from torch import Tensor

from fedmtl.comm.delta import copy_digest
from fedmtl.fl.client_state import DOWNLINK_COPY, ClientState
from fedmtl.fl.federation import Federation, RoundPlan

#: the round a mirror was last sent (the least recent go first beyond FlowerSettings.downlink_mirrors)
ROUND_KEY = "downlink_round"


def bases(plan: RoundPlan) -> dict[int, str]:
    """Client id -> the digest of the copy its payload is a difference against (clients sent a full model: none)."""
    return {cid: copy_digest(copy) for cid, copy in plan.copies.items()}


def remember_copies(
    fed: Federation,
    plan: RoundPlan,
    answered: Iterable[int],
    lost: Iterable[int],
    client_states: Mapping[int, ClientState],
    limit: int = 0,
) -> dict[int, ClientState]:
    """``client_states`` with the mirrors after ``plan`` was sent: each answered client's is what it decoded
    (stamped with the round), each lost client's is dropped, and beyond ``limit`` mirrors (0: no limit) the
    least recently sent are dropped (ties: the lower client id first); unchanged (a new dict) without
    ``comm.downlink_delta``. The mirror lives in the client's codec slot, where the simulation keeps its copy."""
    out = dict(client_states)
    if fed.down_delta is None:
        return out
    answered = [c for c in answered if c in plan.payloads]
    for cid, decoded in zip(answered, fed.receive_all(plan, answered)):
        prior = out.get(cid, ClientState())
        out[cid] = prior.with_codec({**prior.codec, DOWNLINK_COPY: dict(decoded), ROUND_KEY: torch.tensor(plan.round)})
    held = sorted(
        (int(cast(Tensor, s.codec.get(ROUND_KEY, torch.tensor(-1)))), c) for c, s in out.items() if DOWNLINK_COPY in s.codec
    )
    evicted = [c for _, c in held[: len(held) - limit]] if limit else []
    for cid in [*lost, *evicted]:
        state = out.get(cid)
        if state is not None and DOWNLINK_COPY in state.codec:
            out[cid] = state.with_codec({k: v for k, v in state.codec.items() if k not in (DOWNLINK_COPY, ROUND_KEY)})
    return out


__all__ = ["bases", "remember_copies"]
