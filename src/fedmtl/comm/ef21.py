"""EF21 on the uplink: each client's update is sent as the compressed change of an estimate both sides keep.

Richtárik, Sokolov & Fatkhullin, 2021, "EF21: A New, Simpler, Theoretically Better, and Practically Faster
Error Feedback", NeurIPS (Algorithm 1; partial participation: Fatkhullin et al., 2021, "EF21 with Bells &
Whistles", Section 5). Client ``i`` and the server both keep an estimate ``g_i`` of the client's update
(zero at first). In a round the client computes its update ``Δ_i``, sends ``c_i = C(Δ_i - g_i)`` by the
uplink chain, and both set ``g_i <- g_i + c_i``; the server aggregates the new ``g_i`` of the clients that
took part. Where a client's updates share a persistent direction (its data's drift on non-IID data),
``Δ_i - g_i`` is smaller than ``Δ_i`` and a contractive compressor ``C`` (top-k, a quantiser) loses less of it.
Unlike error feedback, nothing is held back: the estimate is what the server uses.

``c_i`` is what the server decodes from the payload; the client decodes its own payload too, so the two
estimates are equal bit for bit. The client keeps ``g_i`` in its codec slot (checkpointed with it); the
server's mirror is the same tensors (in simulation it reads them from the client's state, as it does the
downlink copy: :mod:`fedmtl.comm.delta`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.comm.link import Link
from fedmtl.tree import TensorTree


def difference(update: Mapping[str, Tensor], estimate: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """``Δ - g`` per tensor (``Δ`` where there is no estimate yet: ``g = 0``).

    Raises:
        ValueError: an estimate's shape differs from its update's.
    """
    est = estimate or {}
    for n, g in est.items():
        if n in update and g.shape != update[n].shape:
            raise ValueError(f"EF21 estimate for {n!r} has shape {list(g.shape)}, the update {list(update[n].shape)}")
    return {n: d - est[n] if n in est else d for n, d in update.items()}


def advance(estimate: Mapping[str, Tensor] | None, decoded: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``g + c`` per tensor of ``decoded`` (``c`` where there is no estimate yet), in ``decoded``'s order.

    Raises:
        ValueError: an estimate's shape differs from the decoded tensor's.
    """
    est = estimate or {}
    out = {}
    for n, c in decoded.items():
        g = est.get(n)
        if g is not None and g.shape != c.shape:
            raise ValueError(f"EF21 estimate for {n!r} has shape {list(g.shape)}, the payload {list(c.shape)}")
        out[n] = c if g is None else g + c
    return out


def encode(
    link: Link,
    update: Mapping[str, Tensor],
    estimate: Mapping[str, Tensor] | None,
    state: TensorTree | None,
    generator: torch.Generator | None,
) -> tuple[bytes, TensorTree, dict[str, Tensor]]:
    """The client's step: the payload of ``C(Δ - g)``, the link's next codec state and the next estimate.

    The next estimate adds what the payload decodes to (the server's decoding, so both sides agree exactly).
    """
    payload, next_state = link.encode(difference(update, estimate), state, generator)
    decoded = link.decode(payload, expected={n: torch.empty_like(t, device="meta") for n, t in update.items()})
    return payload, next_state, advance(estimate, {n: decoded[n] for n in update})
