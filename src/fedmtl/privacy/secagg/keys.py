"""Key material for secure aggregation: X25519 key agreement, HKDF, AES-GCM, randomness.

Each client holds two X25519 key pairs (Bonawitz et al., CCS 2017, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", Fig. 4): one whose pairwise agreements seed the masks, one
whose agreements key the authenticated encryption of the Shamir shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from fedmtl._extras import require

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def crypto(module: str) -> ModuleType:
    """``cryptography.<module>``, imported on first use (the ``privacy`` extra)."""
    return require(f"cryptography.{module}", "privacy", "secure aggregation")

SEED_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def random_bytes(n: int, generator: torch.Generator | None) -> bytes:
    """``n`` random bytes: from ``generator`` (a reproducible simulation) or, if None, the OS CSPRNG.

    Args:
        n: number of bytes.
        generator: a seeded torch generator for reproducible simulations; ``None`` for real keys.
    """
    if n < 0:
        raise ValueError(f"number of random bytes must be >= 0, got {n}")
    if generator is None:
        return os.urandom(n)
    return bytes(torch.randint(0, 256, (n,), generator=generator, dtype=torch.uint8).tolist())


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw encoding sent over the wire."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 private bytes (as the server does after reconstruction)."""
        private = crypto("hazmat.primitives.asymmetric.x25519").X25519PrivateKey.from_private_bytes(raw)
        return cls(private, private.public_key().public_bytes_raw())

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes (what gets Shamir-shared for the mask key)."""
        return self.private.private_bytes_raw()


def generate_keypair(generator: torch.Generator | None = None) -> KeyPair:
    """A fresh X25519 key pair, drawn from ``generator`` if given (simulation) else from the OS."""
    return KeyPair.from_private_bytes(random_bytes(SEED_BYTES, generator))


def hkdf(secret: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt: a uniform key bound to ``info``."""
    hazmat = crypto("hazmat.primitives.kdf.hkdf"), crypto("hazmat.primitives.hashes")
    return hazmat[0].HKDF(algorithm=hazmat[1].SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
    """X25519 Diffie-Hellman with a peer, then HKDF bound to ``info``; symmetric in the two parties."""
    if len(peer_public) != SEED_BYTES:
        raise ValueError(f"an X25519 public key has 32 bytes, got {len(peer_public)}")
    shared = own.private.exchange(crypto("hazmat.primitives.asymmetric.x25519").X25519PublicKey.from_public_bytes(peer_public))
    return hkdf(shared, info)


def encrypt(key: bytes, plaintext: bytes, aad: bytes, generator: torch.Generator | None) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag``; ``aad`` is authenticated, not encrypted."""
    nonce = random_bytes(NONCE_BYTES, generator)
    return nonce + crypto("hazmat.primitives.ciphers.aead").AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises ``cryptography.exceptions.InvalidTag`` if anything was altered."""
    return crypto("hazmat.primitives.ciphers.aead").AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
