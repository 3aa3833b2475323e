"""The secure aggregation protocol: one client class and pure server stages, run in process or over a network.

:func:`run_protocol` plays every party in process (the simulation); the Flower deployment
(:mod:`fedmtl.integrations.flower.secagg_server` / ``secagg_client``) runs the same client methods on
the nodes and the same server stages (:func:`setup_round`, :func:`relay`, :func:`require_survivors`,
:func:`unmask_sums`) on the server, with messages in between.

Bonawitz et al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
(semi-honest server variant, Fig. 4), with the sparse neighbour graph of SecAgg+ (Bell et al., CCS
2020) as an option, and one twist for multi-task models: each client may hold several parameter
*groups* (the shared trunk, some task heads) and the sum of each group is taken over its holders
only. Masks for group g are exchanged only between holders of g; the self-mask seed is per group,
so a group whose surviving holders are too few is *withheld* (its self-masks never revealed)
without aborting the others.

Rounds:
  0. AdvertiseKeys: each client sends two X25519 public keys (cipher, mask).
  1. ShareKeys: each client Shamir-shares its mask private key and its per-group self-mask seeds
     among its neighbours (and itself), each share AES-GCM-encrypted to the recipient.
  2. MaskedInputCollection: ``y_i = x_i + PRG(b_i) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)``.
  3. Unmasking: survivors reveal, for each neighbour, the self-mask shares if it survived or the
     mask-key shares if it dropped (never both); the server removes the masks that did not cancel.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedmtl.config.privacy import SecureAggregationConfig
from fedmtl.privacy.secagg import keys, prg, shamir
from fedmtl.privacy.secagg.masking import default_degree, neighbour_graph

ID_BYTES = 4


class SecAggError(RuntimeError):
    """The protocol cannot complete safely; the message says which check failed.

    Attributes:
        dropped: the clients that had dropped out when it failed, when the caller knows them
            (:func:`~fedmtl.privacy.secagg.aggregate.secure_aggregate` sets it).
        reasons: client -> why it dropped, when the caller knows (a deployment does).
    """

    dropped: tuple[int, ...] = ()
    reasons: dict[int, str] = {}  # noqa: RUF012  (replaced per instance, never mutated)


@dataclass(frozen=True)
class Advertisement:
    """Round 0 message: a client's two public keys."""

    client_id: int
    cipher_public: bytes
    mask_public: bytes

    @property
    def nbytes(self) -> int:
        return ID_BYTES + len(self.cipher_public) + len(self.mask_public)


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1 message, relayed by the server: ``sender``'s shares for ``recipient``, encrypted."""

    sender: int
    recipient: int
    blob: bytes

    @property
    def nbytes(self) -> int:
        return 2 * ID_BYTES + len(self.blob)


@dataclass(frozen=True)
class Reveal:
    """Round 3 message: shares a survivor reveals about its neighbours."""

    sender: int
    mask_key_shares: dict[int, shamir.Share]  # dropped neighbour -> share of its mask private key
    self_mask_shares: dict[tuple[int, str], shamir.Share]  # (surviving neighbour, group) -> share of b

    @property
    def nbytes(self) -> int:
        n = len(self.mask_key_shares) + len(self.self_mask_shares)
        return ID_BYTES + n * (ID_BYTES + 2 + shamir.ELEMENT_BYTES)  # owner id, group index, value


def _sign(i: int, j: int) -> int:
    return 1 if i < j else -1


def _label(kind: str, round_id: bytes, group: str = "") -> bytes:
    return b"fedmtl/secagg/" + kind.encode() + b"/" + round_id + b"/" + group.encode()


class SecAggClient:
    """One party of the protocol. Holds its keys and received shares for one round only.

    Args:
        client_id: the client's id (>= 0).
        groups: the parameter groups the client holds (one self-mask seed each).
        bits: ring size exponent.
        round_id: bytes binding every derived key to this round.
        generator: randomness (None: the OS CSPRNG).
    """

    def __init__(
        self,
        client_id: int,
        groups: Collection[str],
        *,
        bits: int,
        round_id: bytes,
        generator: torch.Generator | None,
    ) -> None:
        if client_id < 0:
            raise ValueError(f"client ids must be >= 0, got {client_id}")
        self.id = client_id
        self.bits = bits
        self.round_id = round_id
        self.generator = generator
        self.cipher_keys = keys.generate_keypair(generator)
        self.mask_keys = keys.generate_keypair(generator)
        self.self_seeds = {g: keys.random_bytes(keys.SEED_BYTES, generator) for g in sorted(set(groups))}
        self.adverts: dict[int, Advertisement] = {}
        self.holders: dict[str, frozenset[int]] = {}
        self.threshold = 0
        self.received: dict[int, tuple[shamir.Share, dict[str, shamir.Share]]] = {}

    # Between messages (a deployed client keeps this in its node's state) ---------------------
    def to_bytes(self) -> bytes:
        """The client's round state (its private keys included) for the node's own storage, never the wire."""
        doc = {
            "id": self.id,
            "bits": self.bits,
            "round_id": self.round_id.hex(),
            "cipher": self.cipher_keys.private_bytes().hex(),
            "mask": self.mask_keys.private_bytes().hex(),
            "seeds": {g: s.hex() for g, s in self.self_seeds.items()},
            "adverts": {str(j): [a.cipher_public.hex(), a.mask_public.hex()] for j, a in self.adverts.items()},
            "holders": {g: sorted(h) for g, h in self.holders.items()},
            "threshold": self.threshold,
            "received": {str(j): [k.y, {g: v.y for g, v in s.items()}] for j, (k, s) in self.received.items()},
        }
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SecAggClient:
        """Inverse of :meth:`to_bytes`; later randomness (share polynomials, nonces) comes from the OS."""
        doc = json.loads(raw)
        client = cls.__new__(cls)
        client.id, client.bits, client.generator = int(doc["id"]), int(doc["bits"]), None
        client.round_id = bytes.fromhex(doc["round_id"])
        client.cipher_keys = keys.KeyPair.from_private_bytes(bytes.fromhex(doc["cipher"]))
        client.mask_keys = keys.KeyPair.from_private_bytes(bytes.fromhex(doc["mask"]))
        client.self_seeds = {g: bytes.fromhex(s) for g, s in doc["seeds"].items()}
        client.adverts = {
            int(j): Advertisement(int(j), bytes.fromhex(c), bytes.fromhex(m)) for j, (c, m) in doc["adverts"].items()
        }
        client.holders = {g: frozenset(h) for g, h in doc["holders"].items()}
        client.threshold = int(doc["threshold"])
        x = client.id + 1
        client.received = {
            int(j): (shamir.Share(x, k), {g: shamir.Share(x, v) for g, v in s.items()})
            for j, (k, s) in doc["received"].items()
        }
        return client

    # Round 0 -------------------------------------------------------------------------------
    def advertise(self) -> Advertisement:
        """Send the two public keys."""
        return Advertisement(self.id, self.cipher_keys.public, self.mask_keys.public)

    # Round 1 -------------------------------------------------------------------------------
    def share_keys(
        self, adverts: Mapping[int, Advertisement], holders: Mapping[str, frozenset[int]], threshold: int
    ) -> list[EncryptedShare]:
        """Shamir-share the mask key and self-mask seeds among the neighbours in ``adverts`` and self."""
        if len({a.cipher_public for a in adverts.values()} | {self.cipher_keys.public}) != len(adverts) + 1:
            raise SecAggError(f"client {self.id}: neighbours advertised duplicate public keys")
        if len(adverts) + 1 < threshold:
            raise SecAggError(
                f"client {self.id}: {len(adverts) + 1} parties in its neighbourhood, fewer than threshold t={threshold}"
            )
        self.adverts = dict(adverts)
        self.holders = dict(holders)
        self.threshold = threshold
        self.received = {}  # a re-share (a neighbour dropped before sharing) starts afresh
        recipients = sorted([*self.adverts, self.id])
        xs = [r + 1 for r in recipients]
        key_shares = shamir.split(self.mask_keys.private_bytes(), xs, threshold, self.generator)
        seed_shares = {g: shamir.split(s, xs, threshold, self.generator) for g, s in self.self_seeds.items()}
        out = []
        for k, r in enumerate(recipients):
            body = key_shares[k].to_bytes() + b"".join(
                seed_shares[g][k].to_bytes() for g in sorted(seed_shares)
            )
            if r == self.id:
                self.received[self.id] = self._parse(self.id, body)
                continue
            header = struct.pack(">II", self.id, r)
            aead_key = keys.agree(
                self.cipher_keys, self.adverts[r].cipher_public, _label("enc", self.round_id)
            )
            out.append(
                EncryptedShare(self.id, r, keys.encrypt(aead_key, header + body, header, self.generator))
            )
        return out

    def _parse(self, sender: int, body: bytes) -> tuple[shamir.Share, dict[str, shamir.Share]]:
        size = shamir.ELEMENT_BYTES
        groups = sorted(g for g, h in self.holders.items() if sender in h)
        if len(body) != size * (1 + len(groups)):
            raise SecAggError(
                f"client {self.id}: share from client {sender} has {len(body)} bytes, malformed"
            )
        x = self.id + 1
        values = [int.from_bytes(body[k * size : (k + 1) * size], "big") for k in range(1 + len(groups))]
        return shamir.Share(x, values[0]), {
            g: shamir.Share(x, v) for g, v in zip(groups, values[1:], strict=False)
        }

    # Round 2 -------------------------------------------------------------------------------
    def masked_input(
        self, inbox: Sequence[EncryptedShare], inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Decrypt and check the shares received, then mask each group's input.

        Args:
            inbox: the encrypted shares the server relayed to this client.
            inputs: group -> the client's quantised input (uint64 in ``[0, 2^bits)``), one per group it holds.
        """
        if set(inputs) != set(self.self_seeds):
            raise SecAggError(
                f"client {self.id}: inputs for groups {sorted(inputs)}, but it shared seeds for {sorted(self.self_seeds)}"
            )
        for msg in inbox:
            if msg.recipient != self.id or msg.sender not in self.adverts:
                raise SecAggError(f"client {self.id}: unexpected share {msg.sender}->{msg.recipient}")
            header = struct.pack(">II", msg.sender, self.id)
            aead_key = keys.agree(
                self.cipher_keys, self.adverts[msg.sender].cipher_public, _label("enc", self.round_id)
            )
            try:
                plain = keys.decrypt(aead_key, msg.blob, header)
            except keys.crypto("exceptions").InvalidTag:
                raise SecAggError(
                    f"client {self.id}: share from client {msg.sender} failed authentication "
                    "(tampered or corrupted in transit)"
                ) from None
            if plain[: len(header)] != header:
                raise SecAggError(f"client {self.id}: share from client {msg.sender} names the wrong parties")
            self.received[msg.sender] = self._parse(msg.sender, plain[len(header) :])
        missing = set(self.adverts) - set(self.received)
        if missing:
            raise SecAggError(f"client {self.id}: no shares received from neighbours {sorted(missing)}")
        mod = prg.ring_mask(self.bits)
        out = {}
        for g, x in inputs.items():
            y = x.astype(np.uint64) + prg.expand(
                keys.hkdf(self.self_seeds[g], _label("self", self.round_id, g)), x.size, self.bits
            )
            for j in self.adverts:
                if j in self.holders[g]:
                    seed = keys.agree(
                        self.mask_keys, self.adverts[j].mask_public, _label("mask", self.round_id, g)
                    )
                    pad = prg.expand(seed, x.size, self.bits)
                    y = y + pad if _sign(self.id, j) > 0 else y - pad
            out[g] = y & mod
        return out

    # Round 3 -------------------------------------------------------------------------------
    def unmask(self, survivors: Collection[int], min_group_survivors: int) -> Reveal:
        """Reveal self-mask shares of surviving neighbours, mask-key shares of dropped ones, never both.

        Self-mask shares of a group are revealed only if at least ``min_group_survivors`` of its
        holders survived, so a group's lone survivor is never unmasked.
        """
        alive = set(survivors)
        hood = set(self.adverts) | {self.id}
        if len(alive & hood) < self.threshold:
            raise SecAggError(
                f"client {self.id}: only {len(alive & hood)} of its neighbourhood survived, fewer than "
                f"threshold t={self.threshold}; refusing to unmask"
            )
        enough = {g for g, h in self.holders.items() if len(h & alive) >= min_group_survivors}
        key_shares, seed_shares = {}, {}
        for j in hood:
            key_share, seeds = self.received[j]
            if j in alive:
                seed_shares.update({(j, g): s for g, s in seeds.items() if g in enough})
            else:
                key_shares[j] = key_share
        return Reveal(self.id, key_shares, seed_shares)


@dataclass
class ProtocolStats:
    """Cost of one protocol run. Bytes are per client (mean over the cohort); seconds are wall time."""

    upload_bytes: float = 0.0
    download_bytes: float = 0.0
    client_seconds: float = 0.0  # mean per client, all rounds
    server_seconds: float = 0.0
    total_seconds: float = 0.0
    neighbours: float = 0.0
    per_client_upload: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolOutput:
    """What the server learns: each group's ring sum over its contributing (surviving) holders."""

    sums: dict[str, np.ndarray]
    contributors: dict[str, tuple[int, ...]]
    withheld: tuple[str, ...]
    masked: dict[int, dict[str, np.ndarray]]
    threshold: int
    stats: ProtocolStats


@dataclass(frozen=True)
class RoundSetup:
    """The server's plan of one protocol run: who exchanges masks with whom, who holds which group, t."""

    graph: dict[int, frozenset[int]]
    holders: dict[str, frozenset[int]]
    threshold: int


def setup_round(
    groups_of: Mapping[int, Collection[str]], cfg: SecureAggregationConfig, generator: torch.Generator | None
) -> RoundSetup:
    """The neighbour graph (complete, or SecAgg+'s k-regular one), each group's holders and the threshold.

    Args:
        groups_of: client id -> the groups it holds (the cohort that advertised keys).
        cfg: graph, degree and threshold.
        generator: randomness for the graph's cyclic order (None: identity order).
    """
    cohort = sorted(groups_of)
    holders = {
        g: frozenset(c for c in cohort if g in groups_of[c])
        for g in sorted({g for v in groups_of.values() for g in v})
    }
    degree = None
    if cfg.graph == "k_regular":
        degree = cfg.degree if cfg.degree is not None else default_degree(len(cohort))
    graph = neighbour_graph(cohort, degree, generator)
    threshold = cfg.resolve_threshold(min(len(nb) for nb in graph.values()) + 1)
    return RoundSetup(graph, holders, threshold)


def relay(messages: Sequence[EncryptedShare], cohort: Collection[int]) -> dict[int, list[EncryptedShare]]:
    """Round 1's routing: each encrypted share to its recipient's inbox (a share for a stranger is refused)."""
    inbox: dict[int, list[EncryptedShare]] = {c: [] for c in cohort}
    for m in messages:
        if m.recipient not in inbox:
            raise SecAggError(f"client {m.sender} sent a share to client {m.recipient}, who is not in the round")
        inbox[m.recipient].append(m)
    return inbox


def require_survivors(survivors: Collection[int], threshold: int) -> None:
    """Refuse to go on to unmasking with fewer masked inputs than the threshold (nothing is revealed)."""
    if len(survivors) < threshold:
        raise SecAggError(
            f"only {len(survivors)} clients sent masked inputs, fewer than threshold t={threshold}"
        )


def run_protocol(
    inputs: Mapping[int, Mapping[str, np.ndarray]],
    cfg: SecureAggregationConfig,
    *,
    dropped: Collection[int] = (),
    late_dropped: Collection[int] = (),
    generator: torch.Generator | None = None,
    intercept: Callable[[list[EncryptedShare]], list[EncryptedShare]] | None = None,
) -> ProtocolOutput:
    """Run all four rounds among fresh clients; the function body plays the (semi-honest) server.

    Args:
        inputs: client id -> group -> quantised input (uint64 in ``[0, 2^cfg.bits)``); all holders of
            a group must send the same length.
        cfg: threshold, bits, graph.
        dropped: clients that drop after sharing keys, before sending their masked input.
        late_dropped: clients that send their masked input but not their reveal.
        generator: randomness for keys, shares, graph (None: OS CSPRNG, random graph order).
        intercept: a hook on the relayed round-1 messages (to test tampering).

    Raises:
        SecAggError: fewer than ``t`` survivors, a failed authentication, or too few shares.
    """
    t_start = time.perf_counter()
    cohort = sorted(inputs)
    dropped_set, late_set = set(dropped), set(late_dropped)
    if not dropped_set | late_set <= set(cohort) or dropped_set & late_set:
        raise ValueError(
            f"dropped={sorted(dropped_set)} and late_dropped={sorted(late_set)} must be disjoint cohort subsets"
        )
    setup = setup_round({c: list(inputs[c]) for c in cohort}, cfg, generator)
    for g, h in setup.holders.items():
        if len({inputs[c][g].size for c in h}) != 1:
            raise ValueError(f"holders of group {g!r} sent inputs of different lengths")
    graph, holders, threshold = setup.graph, setup.holders, setup.threshold
    round_id = keys.random_bytes(16, generator)
    up = dict.fromkeys(cohort, 0)
    down = dict.fromkeys(cohort, 0)
    client_time = 0.0

    def timed(fn: Callable, *args):  # type: ignore[no-untyped-def]
        nonlocal client_time
        t0 = time.perf_counter()
        out = fn(*args)
        client_time += time.perf_counter() - t0
        return out

    clients = {
        c: timed(
            lambda c=c: SecAggClient(c, list(inputs[c]), bits=cfg.bits, round_id=round_id, generator=generator)
        )
        for c in cohort
    }
    # Round 0: keys, relayed to neighbours.
    adverts = {c: timed(clients[c].advertise) for c in cohort}
    for c in cohort:
        up[c] += adverts[c].nbytes
        down[c] += sum(adverts[j].nbytes for j in graph[c])
    # Round 1: encrypted shares, relayed.
    messages: list[EncryptedShare] = []
    for c in cohort:
        messages += timed(clients[c].share_keys, {j: adverts[j] for j in graph[c]}, holders, threshold)
    if intercept is not None:
        messages = intercept(list(messages))
    inbox = relay(messages, cohort)
    for m in messages:
        up[m.sender] += m.nbytes
        down[m.recipient] += m.nbytes
    # Round 2: masked inputs from those still online.
    masked: dict[int, dict[str, np.ndarray]] = {}
    for c in cohort:
        if c not in dropped_set:
            masked[c] = timed(clients[c].masked_input, inbox[c], inputs[c])
            up[c] += sum(-(-v.size * cfg.bits // 8) for v in masked[c].values())
    survivors = frozenset(masked)
    require_survivors(survivors, threshold)
    # Round 3: reveals from those still online after masking.
    reveals: list[Reveal] = []
    for c in sorted(survivors - late_set):
        down[c] += ID_BYTES * len(survivors & graph[c])
        reveals.append(timed(clients[c].unmask, survivors, cfg.min_group_survivors))
        up[c] += reveals[-1].nbytes
    t_server = time.perf_counter()
    sums, contributors, withheld = unmask_sums(masked, reveals, setup, adverts, cfg, round_id)
    server_time = time.perf_counter() - t_server
    n = len(cohort)
    stats = ProtocolStats(
        upload_bytes=sum(up.values()) / n,
        download_bytes=sum(down.values()) / n,
        client_seconds=client_time / n,
        server_seconds=server_time,
        total_seconds=time.perf_counter() - t_start,
        neighbours=sum(len(v) for v in graph.values()) / n,
        per_client_upload=up,
    )
    return ProtocolOutput(sums, contributors, withheld, masked, threshold, stats)


def unmask_sums(
    masked: Mapping[int, Mapping[str, np.ndarray]],
    reveals: Sequence[Reveal],
    setup: RoundSetup,
    adverts: Mapping[int, Advertisement],
    cfg: SecureAggregationConfig,
    round_id: bytes,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]], tuple[str, ...]]:
    """The server's unmasking: add the masked inputs, remove self-masks and dropped clients' pair masks.

    Args:
        masked: survivor -> group -> its masked input (the survivors are exactly its keys).
        reveals: the survivors' round-3 answers (a survivor that dropped since sends none).
        setup: the round's graph, holders and threshold.
        adverts: every advertised client's public keys.
        cfg: bits and ``min_group_survivors``.
        round_id: the bytes every derived key of the round is bound to.

    Returns:
        group -> ring sum, group -> contributors, withheld groups.
    """
    holders, graph, threshold = setup.holders, setup.graph, setup.threshold
    survivors = frozenset(masked)
    key_shares: dict[int, list[shamir.Share]] = {}
    seed_shares: dict[tuple[int, str], list[shamir.Share]] = {}
    for r in reveals:
        for j, s in r.mask_key_shares.items():
            key_shares.setdefault(j, []).append(s)
        for jg, s in r.self_mask_shares.items():
            seed_shares.setdefault(jg, []).append(s)
    revealed_keys: dict[int, keys.KeyPair] = {}

    def mask_key_of(j: int) -> keys.KeyPair:
        if j not in revealed_keys:
            got = key_shares.get(j, [])
            if len(got) < threshold:
                raise SecAggError(
                    f"only {len(got)} shares of dropped client {j}'s mask key, threshold t={threshold}"
                )
            revealed_keys[j] = keys.KeyPair.from_private_bytes(
                shamir.reconstruct(got, threshold, keys.SEED_BYTES)
            )
            if revealed_keys[j].public != adverts[j].mask_public:
                raise SecAggError(f"reconstructed mask key of client {j} does not match its advertised key")
        return revealed_keys[j]

    mod = prg.ring_mask(cfg.bits)
    sums, contributors, withheld = {}, {}, []
    for g, h in holders.items():
        alive = sorted(h & survivors)
        if len(alive) < cfg.min_group_survivors:
            withheld.append(g)
            continue
        size = masked[alive[0]][g].size
        total = np.zeros(size, dtype=np.uint64)
        for i in alive:
            total += masked[i][g]
            got = seed_shares.get((i, g), [])
            if len(got) < threshold:
                raise SecAggError(
                    f"only {len(got)} shares of client {i}'s self-mask for group {g!r}, threshold t={threshold}"
                )
            seed = shamir.reconstruct(got, threshold, keys.SEED_BYTES)
            total -= prg.expand(keys.hkdf(seed, _label("self", round_id, g)), size, cfg.bits)
        for j in sorted(h - survivors):
            for k in sorted(graph[j] & h & survivors):
                seed = keys.agree(mask_key_of(j), adverts[k].mask_public, _label("mask", round_id, g))
                pad = prg.expand(seed, size, cfg.bits)
                total = total - pad if _sign(k, j) > 0 else total + pad
        sums[g] = total & mod
        contributors[g] = tuple(alive)
    return sums, contributors, tuple(withheld)
