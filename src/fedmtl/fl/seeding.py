"""Randomness derived from the experiment seed and a purpose, never from global RNG state.

Every random choice (cohort sampling, a client's batch order, a codec's dither) gets its own
``torch.Generator`` seeded from ``(seed, purpose, round, client)``. So a run resumed at round r
draws exactly what an uninterrupted run draws, and engines that visit clients in different orders
still agree.
"""

from __future__ import annotations

import hashlib

import torch

PURPOSES = {"cohort": 1, "client": 2, "codec": 3, "byzantine": 4, "privacy": 5, "init": 6, "eval": 7, "down": 8, "codec-outbox": 9, "down-state": 10, "systems": 11}


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends on every argument; stable across Python versions and platforms."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown randomness purpose {purpose!r}; known: {sorted(PURPOSES)}")
    text = ":".join(str(v) for v in (seed, PURPOSES[purpose], *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A fresh CPU generator for one purpose."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *keys))


def spawn(parent: torch.Generator, purpose: str) -> torch.Generator:
    """A new generator derived from ``parent``'s current state and ``purpose``, without drawing from it: a second
    stream that may be used alongside the parent (a generator seeded by a draw from the parent could only follow
    whatever drew from it before), so that trainings on the two can run together."""
    digest = hashlib.blake2b(parent.get_state().numpy().tobytes() + purpose.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 2)
