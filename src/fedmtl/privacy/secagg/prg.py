"""A pseudorandom generator: a 32-byte seed expands into a mask vector of integers mod 2^bits.

ChaCha20 (RFC 8439, through ``cryptography``) with a zero nonce is the keystream; every seed is
used once per (round, group, pair) because seeds come from HKDF bound to those labels.
"""

from __future__ import annotations

import numpy as np

from fedmtl.privacy.secagg.keys import crypto

_ZERO_NONCE = bytes(16)


def ring_mask(bits: int) -> np.uint64:
    """``2^bits - 1`` as uint64 (bits in 1..64)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    return np.uint64((1 << bits) - 1)


def expand(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` uniform integers in ``[0, 2^bits)`` as uint64, determined by ``seed``.

    Args:
        seed: 32 bytes (a ChaCha20 key).
        length: number of integers.
        bits: ring size exponent, 1..64.
    """
    if len(seed) != 32:
        raise ValueError(f"PRG seed must be 32 bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    mask = ring_mask(bits)
    ciphers = crypto("hazmat.primitives.ciphers")
    encryptor = ciphers.Cipher(ciphers.algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64) & mask
