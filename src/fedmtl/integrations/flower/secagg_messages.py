"""The records secure aggregation's stages travel in over Flower (one ``ConfigRecord`` per message).

Stage by stage (Bonawitz et al., CCS 2017, Fig. 4; the server only relays and sums):

* train (``train``): the server adds the round id, the client's groups and the ring size; the client
  trains, keeps its update on the node and answers with its two public keys instead of its update;
* share keys (``query.secagg_share``): neighbours' public keys, each group's holders, t; the reply holds
  the client's encrypted Shamir shares, one blob per neighbour;
* masked input (``query.secagg_mask``): the shares relayed to the client and the public plan of the
  quantisation (group sizes, holders, clip ranges, weights, DP clip norm and noise shares); the reply
  holds the client's masked ring vectors;
* unmask (``query.secagg_unmask``): the survivors; the reply holds the Shamir shares the client reveals.

Every reader checks what it reads and raises :class:`~fedmtl.integrations.flower.messages.MessageFormatError`
naming the field: a malformed answer drops that client from the round, never the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedmtl.integrations.flower.messages import MessageFormatError
from fedmtl.privacy.secagg import shamir
from fedmtl.privacy.secagg.protocol import Advertisement, EncryptedShare, Reveal

SECAGG = "fedmtl.secagg"
SHARE, MASK, UNMASK = "query.secagg_share", "query.secagg_mask", "query.secagg_unmask"
#: the longest JSON text a secure-aggregation record may carry
MAX_JSON_CHARS = 1 << 24


def _record(content: RecordDict, what: str) -> ConfigRecord:
    if SECAGG not in content.config_records:
        raise MessageFormatError(f"{what} lacks the {SECAGG!r} record")
    return content.config_records[SECAGG]


def _get(record: ConfigRecord, key: str, kind: type, what: str) -> Any:
    value = record.get(key)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise MessageFormatError(f"{what}'s {key!r} must be {kind.__name__}, got {str(value)[:60]!r}")
    return value


def _json(record: ConfigRecord, key: str, what: str) -> Any:
    text = _get(record, key, str, what)
    if len(text) > MAX_JSON_CHARS:
        raise MessageFormatError(f"{what}'s {key!r} has {len(text)} characters, at most {MAX_JSON_CHARS}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MessageFormatError(f"{what}'s {key!r} is not valid JSON ({type(exc).__name__})") from None


def _int_list(record: ConfigRecord, key: str, what: str) -> list[int]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise MessageFormatError(f"{what}'s {key!r} must be a list of ints")
    return cast(list[int], list(value))


def _bytes_list(record: ConfigRecord, key: str, what: str) -> list[bytes]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise MessageFormatError(f"{what}'s {key!r} must be a list of bytes")
    return cast(list[bytes], list(value))


# -- train ---------------------------------------------------------------------------------------
def offer(content: RecordDict, round_id: bytes, groups: Sequence[str], bits: int) -> None:
    """Ask for secure aggregation in a train message (``content`` is the message's own, new RecordDict)."""
    content[SECAGG] = ConfigRecord({"round-id": round_id, "groups": json.dumps(list(groups)), "bits": bits})


def read_offer(content: RecordDict) -> tuple[bytes, list[str], int] | None:
    """The train message's request (None: a plain round)."""
    if SECAGG not in content.config_records:
        return None
    rec, what = content.config_records[SECAGG], "secure-aggregation offer"
    groups = _json(rec, "groups", what)
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
        raise MessageFormatError(f"{what}'s 'groups' must be a non-empty list of names")
    return _get(rec, "round-id", bytes, what), groups, _get(rec, "bits", int, what)


def advertise(content: RecordDict, advert: Advertisement) -> RecordDict:
    """A train reply's public keys (the reply carries no update)."""
    content[SECAGG] = ConfigRecord({"cipher": advert.cipher_public, "mask": advert.mask_public})
    return content


def read_advert(content: RecordDict, client_id: int) -> Advertisement:
    rec, what = _record(content, "train reply"), "train reply's keys"
    cipher, mask = _get(rec, "cipher", bytes, what), _get(rec, "mask", bytes, what)
    if len(cipher) != 32 or len(mask) != 32:
        raise MessageFormatError(f"{what} must be two 32-byte X25519 public keys")
    return Advertisement(client_id, cipher, mask)


# -- share keys ----------------------------------------------------------------------------------
def share_request(
    adverts: Mapping[int, Advertisement], holders: Mapping[str, frozenset[int]], threshold: int
) -> RecordDict:
    doc = {str(j): [a.cipher_public.hex(), a.mask_public.hex()] for j, a in adverts.items()}
    return RecordDict(
        {
            SECAGG: ConfigRecord(
                {
                    "adverts": json.dumps(doc),
                    "holders": json.dumps({g: sorted(h) for g, h in holders.items()}),
                    "threshold": threshold,
                }
            )
        }
    )


def read_share_request(
    content: RecordDict,
) -> tuple[dict[int, Advertisement], dict[str, frozenset[int]], int]:
    rec, what = _record(content, "share-keys request"), "share-keys request"
    try:
        adverts = {
            int(j): Advertisement(int(j), bytes.fromhex(c), bytes.fromhex(m))
            for j, (c, m) in _json(rec, "adverts", what).items()
        }
        holders = {str(g): frozenset(int(c) for c in h) for g, h in _json(rec, "holders", what).items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise MessageFormatError(f"{what} holds malformed keys or holders ({exc})") from None
    return adverts, holders, _get(rec, "threshold", int, what)


def shares_reply(shares: Sequence[EncryptedShare]) -> RecordDict:
    return RecordDict(
        {SECAGG: ConfigRecord({"recipients": [s.recipient for s in shares], "blobs": [s.blob for s in shares]})}
    )


def read_shares_reply(content: RecordDict, sender: int) -> list[EncryptedShare]:
    rec, what = _record(content, "share-keys reply"), "share-keys reply"
    to, blobs = _int_list(rec, "recipients", what), _bytes_list(rec, "blobs", what)
    if len(to) != len(blobs) or len(set(to)) != len(to):
        raise MessageFormatError(f"{what} must hold one blob per distinct recipient")
    return [EncryptedShare(sender, r, b) for r, b in zip(to, blobs, strict=True)]


# -- masked input --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskPlan:
    """The public plan of one client's quantisation (the server's to decide, the same for every holder).

    Attributes:
        groups: group -> parameter names, sizes, holders and clip range of each group the client holds.
        weights: group -> the client's weight in [0, 1] (None: unweighted, as under DP).
        clip_norm: DP's clip norm this round (None without DP).
        noise_shares: group -> m_g, how many clients share the group's distributed DP noise.
    """

    groups: dict[str, dict[str, Any]]
    weights: dict[str, float] | None
    clip_norm: float | None
    noise_shares: dict[str, int]


def mask_request(inbox: Sequence[EncryptedShare], plan: MaskPlan) -> RecordDict:
    doc = {"groups": plan.groups, "weights": plan.weights, "clip_norm": plan.clip_norm, "noise_shares": plan.noise_shares}
    return RecordDict(
        {
            SECAGG: ConfigRecord(
                {"senders": [s.sender for s in inbox], "blobs": [s.blob for s in inbox], "plan": json.dumps(doc)}
            )
        }
    )


def read_mask_request(content: RecordDict, recipient: int) -> tuple[list[EncryptedShare], MaskPlan]:
    rec, what = _record(content, "masked-input request"), "masked-input request"
    senders, blobs = _int_list(rec, "senders", what), _bytes_list(rec, "blobs", what)
    if len(senders) != len(blobs):
        raise MessageFormatError(f"{what} must hold one blob per sender")
    doc = _json(rec, "plan", what)
    try:
        plan = MaskPlan(
            groups={str(g): dict(v) for g, v in doc["groups"].items()},
            weights=None if doc["weights"] is None else {str(g): float(w) for g, w in doc["weights"].items()},
            clip_norm=None if doc["clip_norm"] is None else float(doc["clip_norm"]),
            noise_shares={str(g): int(m) for g, m in doc["noise_shares"].items()},
        )
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise MessageFormatError(f"{what}'s plan is malformed ({exc})") from None
    return [EncryptedShare(s, recipient, b) for s, b in zip(senders, blobs, strict=True)], plan


def ring_dtype(bits: int) -> str:
    """The narrowest little-endian unsigned type that holds a ring element (4 bytes for the default 2^32)."""
    return "<u4" if bits <= 32 else "<u8"


def masked_reply(masked: Mapping[str, np.ndarray], bits: int) -> RecordDict:
    groups = sorted(masked)
    values = [masked[g].astype(ring_dtype(bits)).tobytes() for g in groups]
    return RecordDict({SECAGG: ConfigRecord({"groups": groups, "values": values})})


def read_masked_reply(content: RecordDict, sizes: Mapping[str, int], bits: int) -> dict[str, np.ndarray]:
    """The masked vectors, checked against the groups and sizes the server planned and the ring."""
    rec, what = _record(content, "masked-input reply"), "masked-input reply"
    groups, values = rec.get("groups"), _bytes_list(rec, "values", what)
    if not isinstance(groups, list) or sorted(map(str, groups)) != sorted(sizes) or len(values) != len(groups):
        raise MessageFormatError(f"{what} holds groups {str(groups)[:80]}, expected {sorted(sizes)}")
    out, dtype = {}, np.dtype(ring_dtype(bits))
    for g, raw in zip(map(str, groups), values, strict=True):
        if len(raw) != dtype.itemsize * sizes[g]:
            raise MessageFormatError(f"{what}: group {g!r} has {len(raw)} bytes, expected {dtype.itemsize * sizes[g]}")
        vec = np.frombuffer(raw, dtype=dtype).astype(np.uint64)
        if bits < 64 and bool((vec >> np.uint64(bits)).any()):
            raise MessageFormatError(f"{what}: group {g!r} holds values outside the ring 2^{bits}")
        out[g] = vec
    return out


# -- unmask --------------------------------------------------------------------------------------
def unmask_request(survivors: Sequence[int], min_group_survivors: int) -> RecordDict:
    return RecordDict(
        {SECAGG: ConfigRecord({"survivors": sorted(survivors), "min-group-survivors": min_group_survivors})}
    )


def read_unmask_request(content: RecordDict) -> tuple[list[int], int]:
    rec, what = _record(content, "unmask request"), "unmask request"
    return _int_list(rec, "survivors", what), _get(rec, "min-group-survivors", int, what)


def reveal_reply(reveal: Reveal) -> RecordDict:
    doc = {
        "keys": {str(j): s.y for j, s in reveal.mask_key_shares.items()},
        "seeds": [[j, g, s.y] for (j, g), s in reveal.self_mask_shares.items()],
    }
    return RecordDict({SECAGG: ConfigRecord({"reveal": json.dumps(doc)})})


def read_reveal(content: RecordDict, sender: int) -> Reveal:
    """A survivor's reveal; a share's ``x`` is the sender's id + 1, as it was dealt."""
    rec, what = _record(content, "unmask reply"), "unmask reply"
    doc, x = _json(rec, "reveal", what), sender + 1
    try:
        keys = {int(j): shamir.Share(x, int(y)) for j, y in doc["keys"].items()}
        seeds = {(int(j), str(g)): shamir.Share(x, int(y)) for j, g, y in doc["seeds"]}
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise MessageFormatError(f"{what} is malformed ({exc})") from None
    if any(not 0 <= s.y < shamir.PRIME for s in [*keys.values(), *seeds.values()]):
        raise MessageFormatError(f"{what} holds a share outside the field")
    return Reveal(sender, keys, seeds)
