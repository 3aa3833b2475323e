"""Simulated Byzantine clients: who attacks, and what their update becomes.

Pure functions the round loop calls on a client's delta before encoding. Attacks:

* ``sign_flip``: ``-scale * Δ`` (or ``-scale * honest_hint``, the direction of the honest mean, when given);
* ``scaled``:    ``scale * Δ`` (boosted / model-replacement updates, Bagdasaryan et al., 2020);
* ``gaussian``:  ``N(0, scale²)`` noise in place of ``Δ`` (Blanchard et al., 2017's Gaussian Byzantine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from fedmtl.config.training import ByzantineConfig

ATTACKS = ("sign_flip", "scaled", "gaussian")


def _config(cfg: Any) -> ByzantineConfig | None:
    """Accept a ``ByzantineConfig``, a ``ServerConfig`` (its ``byzantine`` field) or ``None``."""
    if cfg is None or isinstance(cfg, ByzantineConfig):
        return cfg
    if hasattr(cfg, "byzantine"):
        return cfg.byzantine
    raise TypeError(f"expected a ByzantineConfig, a ServerConfig or None, got {type(cfg).__name__}")


def _unit(seed: int, client_id: int) -> float:
    digest = hashlib.sha256(f"fedmtl-byzantine:{seed}:{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def malicious_clients(client_ids: Iterable[int], cfg: Any, seed: int) -> frozenset[int]:
    """Exactly ``round(fraction * len(client_ids))`` attackers, fixed for a seed.

    Args:
        client_ids: all client ids of the federation.
        cfg: ``ByzantineConfig``, ``ServerConfig`` or ``None`` (no attackers).
        seed: the experiment seed.
    """
    c = _config(cfg)
    ids = sorted(set(int(i) for i in client_ids))
    if c is None or not ids:
        return frozenset()
    count = round(c.fraction * len(ids))
    return frozenset(sorted(ids, key=lambda i: (_unit(seed, i), i))[:count])


def is_malicious(client_id: int, cfg: Any, seed: int, num_clients: int | None = None) -> bool:
    """Whether ``client_id`` attacks.

    With ``num_clients`` (ids ``0..num_clients-1``) the attackers are exactly
    :func:`malicious_clients`; without it each client attacks independently with probability ``fraction``.
    """
    c = _config(cfg)
    if c is None:
        return False
    if num_clients is not None:
        return client_id in malicious_clients(range(num_clients), c, seed)
    return _unit(seed, client_id) < c.fraction


def attack(
    delta: Mapping[str, Tensor],
    cfg: Any,
    generator: torch.Generator,
    honest_hint: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The malicious version of ``delta`` (a new dict; ``delta`` is not mutated).

    Args:
        delta: the client's honest update, name -> tensor.
        cfg: ``ByzantineConfig`` or ``ServerConfig``; ``None`` returns the update unchanged.
        generator: randomness for ``gaussian``.
        honest_hint: optional estimate of the honest mean; ``sign_flip`` then sends ``-scale * hint``.
    """
    c = _config(cfg)
    if c is None:
        return dict(delta)
    if c.attack == "sign_flip":
        src = delta if honest_hint is None else {k: honest_hint.get(k, v) for k, v in delta.items()}
        return {k: -c.scale * v for k, v in src.items()}
    if c.attack == "scaled":
        return {k: c.scale * v for k, v in delta.items()}
    if c.attack == "gaussian":
        return {
            k: c.scale
            * torch.randn(v.shape, generator=generator, dtype=v.dtype if v.is_floating_point() else None)
            for k, v in delta.items()
        }
    raise ValueError(f"unknown attack {c.attack!r}; known: {ATTACKS}")  # pragma: no cover
