"""Compressed downlinks: send a client the difference between the global model and its last copy.

A client that keeps the model it last received needs only ``params - copy`` (Caldas et al., 2018,
"Expanding the Reach of Federated Learning by Reducing Client Resource Requirements", compress the
broadcast; Sattler et al., 2019, "Robust and Communication-Efficient Federated Learning From Non-i.i.d.
Data", compress the downlink's differences with a residual on the server). The server computes the
difference from its mirror of that copy, which it knows exactly (it decodes what it sent), so whatever
the lossy chain left out is still in the next difference: the mirror is the server's error feedback, per
client, and nothing else needs keeping. A client without a copy (its first round, or one that lost its
state) receives the full model by the ordinary downlink. Bytes are ``len()`` of the payloads, as always.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor

from fedmtl.comm.link import Link
from fedmtl.comm.wire import PayloadError, unpack
from fedmtl.config import comm as comm_cfg

#: the client-state key under which a client keeps its last copy of the parameters it received
COPY_KEY = "downlink_copy"


def build_delta_link(cfg: comm_cfg.CommConfig) -> Link | None:
    """The link of ``comm.downlink_delta`` (``None`` when the chain is empty: full broadcasts only)."""
    if not cfg.downlink_delta:
        return None
    return Link(cfg.downlink_delta, int(cfg.max_payload_mb * 2**20), role="delta")


def encode_delta(
    link: Link, params: Mapping[str, Tensor], copy: Mapping[str, Tensor], generator: torch.Generator | None
) -> bytes:
    """``params - copy`` for every name of ``copy``, in its order, encoded by ``link`` (stateless: the copy is
    the residual). The order fixes the bytes and a stochastic chain's draws, so keep it stable (the model's)."""
    payload, _ = link.encode({n: params[n] - copy[n] for n in copy}, {}, generator)
    return payload


def is_delta(link: Link, payload: bytes) -> bool:
    """Whether ``payload`` was written by ``link`` (a delta link's header carries its role)."""
    byte_codecs = {link.byte_codec.wire_id: link.byte_codec} if link.byte_codec is not None else {}
    try:
        header, _ = unpack(payload, byte_codecs, link.max_payload_bytes)
    except PayloadError:
        return False
    return bool(header.get("chain") == link.chain_spec)


def apply_delta(
    link: Link, payload: bytes, copy: Mapping[str, Tensor], expected: Mapping[str, torch.Size]
) -> dict[str, Tensor]:
    """``copy + decode(payload)``; the payload must carry a difference for exactly the names of ``copy``.

    Raises:
        PayloadError: the payload does not decode, or its names differ from the copy's.
    """
    diff = link.decode(payload, expected)
    if set(diff) != set(copy):
        raise PayloadError(f"model difference holds {len(diff)} tensors, the client's copy {len(copy)}")
    return {n: copy[n] + diff[n] for n in diff}  # in the sender's order


def copy_digest(copy: Mapping[str, Tensor]) -> str:
    """A fingerprint of a copy (names, shapes, dtypes and every bit of the values, in name order): a deployed
    server sends it with each difference, and the client checks its own copy has it before adding the difference
    (a copy the server does not know of, after a lost reply or a restart, would otherwise drift silently)."""
    h = hashlib.sha256()
    for name in sorted(copy):
        t = copy[name].detach().cpu().contiguous()
        h.update(f"{name}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
