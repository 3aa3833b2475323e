"""Shamir t-out-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir, "How to Share a Secret", CACM 1979. A secret of up to 64 bytes is the constant term of a
random polynomial of degree ``t - 1``; any ``t`` evaluations recover it by Lagrange interpolation
at 0, while ``t - 1`` are independent of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedmtl.privacy.secagg.keys import random_bytes

PRIME = 2**521 - 1  # a Mersenne prime; elements take 66 bytes
ELEMENT_BYTES = 66
MAX_SECRET_BYTES = 64


@dataclass(frozen=True)
class Share:
    """The polynomial's value ``y`` at ``x`` (``x`` != 0)."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Only ``y``: the recipient's id fixes ``x``."""
        return self.y.to_bytes(ELEMENT_BYTES, "big")


def split(
    secret: bytes, xs: Sequence[int], threshold: int, generator: torch.Generator | None = None
) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares recover it.

    Args:
        secret: up to 64 bytes.
        xs: distinct, non-zero evaluation points, one per recipient (e.g. recipient id + 1).
        threshold: t, with ``2 <= t <= len(xs)``.
        generator: randomness for the polynomial (None: the OS CSPRNG).
    """
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret has {len(secret)} bytes, at most {MAX_SECRET_BYTES} fit the field")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold={threshold} must be in 1..{len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError(f"evaluation points must be distinct and non-zero, got {list(xs)}")
    coeffs = [int.from_bytes(secret, "big")] + [
        int.from_bytes(random_bytes(ELEMENT_BYTES, generator), "big") % PRIME for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def reconstruct(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """The secret of ``length`` bytes from at least ``threshold`` shares (extra ones are ignored).

    Raises:
        ValueError: fewer than ``threshold`` distinct shares.
    """
    distinct = {s.x: s for s in shares}
    if len(distinct) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(distinct)}")
    use = list(distinct.values())[:threshold]
    return interpolate_at_zero(use).to_bytes(length, "big") if length else b""


def interpolate_at_zero(shares: Sequence[Share]) -> int:
    """Lagrange interpolation of the polynomial through ``shares``, evaluated at 0."""
    secret = 0
    for i, si in enumerate(shares):
        num, den = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (-sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        secret = (secret + si.y * num * pow(den, -1, PRIME)) % PRIME
    return secret
