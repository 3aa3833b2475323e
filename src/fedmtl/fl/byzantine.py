"""Simulated Byzantine clients: who attacks, and what their update becomes.

Pure functions the round loop calls: a fixed set of attackers (:func:`malicious_clients`), each of whom
poisons its data before training (:func:`poison_client`), replaces its update before encoding
(:func:`attack`) or tampers with its reply (:func:`tamper_reply`). Attacks (``server.byzantine.attack``):

* ``sign_flip``: ``-scale * Δ`` (or ``-scale * honest_hint``, the direction of the honest mean, when given);
  Damaskinos et al., 2018, "Asynchronous Byzantine Machine Learning", ICML.
* ``scaled``: ``scale * Δ`` (boosted / model-replacement updates); Bagdasaryan et al., 2020, "How To
  Backdoor Federated Learning", AISTATS.
* ``gaussian``: ``N(0, scale²)`` noise in place of ``Δ``; Blanchard et al., 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS.
* ``nan``: an update of NaN (a crashed or hostile client); the server's decoder must refuse it.
* ``sample_inflation``: the honest update, claiming ``scale`` times its true sample count, to take the
  weight of the weighted mean (the server bounds claims by what it knows of the client).
* ``payload_bomb``: a payload of a few hundred bytes whose header declares ``2**28`` entries (1 GiB as
  float32) per tensor: a decompression / allocation bomb the decoder must refuse before allocating.
* ``label_flip``: honest training on flipped labels (class ``c`` -> ``C - 1 - c``, binary ``y`` ->
  ``1 - y``, regression ``y`` -> ``-y``); Tolpegin et al., 2020, "Data Poisoning Attacks Against
  Federated Learning Systems", ESORICS.
* ``alie``: "A Little Is Enough" (Baruch, Baruch & Goldberg, 2019, NeurIPS): every attacker sends
  ``mu + z sigma`` per coordinate, with ``mu``, ``sigma`` the honest updates' mean and standard deviation
  and ``z = scale * z_max``, ``z_max = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - m`` for ``n``
  clients of which ``m`` attack: small enough to pass for honest under median and Krum.
* ``ipm``: inner product manipulation (Xie, Koyejo & Gupta, 2020, "Fall of Empires: Breaking
  Byzantine-tolerant SGD by Inner Product Manipulation", UAI): every attacker sends ``-scale * mu``, so
  the aggregate's inner product with the honest mean turns negative.

``alie`` and ``ipm`` are omniscient: they see the honest updates of the round (:class:`HonestView`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from fedmtl.comm import Link, pack
from fedmtl.config.training import ByzantineConfig
from fedmtl.data.dataset import ClientData, Split
from fedmtl.fl.node import ClientReply
from fedmtl.tasks import Task

ATTACKS = ("sign_flip", "scaled", "gaussian", "nan", "sample_inflation", "payload_bomb", "label_flip", "alie", "ipm")
#: attacks that replace the update and need the honest updates of the round
OMNISCIENT = ("alie", "ipm")
#: entries a ``payload_bomb`` declares per tensor: 2**28 float32 = 1 GiB
BOMB_ENTRIES = 1 << 28


def _config(cfg: Any) -> ByzantineConfig | None:
    """Accept a ``ByzantineConfig``, a ``ServerConfig`` (its ``byzantine`` field) or ``None``."""
    if cfg is None or isinstance(cfg, ByzantineConfig):
        return cfg
    if hasattr(cfg, "byzantine"):
        found: ByzantineConfig | None = cfg.byzantine
        return found
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


@dataclass(frozen=True)
class HonestView:
    """What an omniscient attacker knows of a round: per parameter, the honest updates' coordinate-wise
    mean and standard deviation, and how many clients take part and attack."""

    mean: dict[str, Tensor]
    std: dict[str, Tensor]
    clients: int
    attackers: int


def honest_view(honest: Sequence[Mapping[str, Tensor]], clients: int, attackers: int) -> HonestView:
    """The :class:`HonestView` of the honest updates ``honest`` (each parameter over the updates holding it)."""
    mean, std = {}, {}
    for name in sorted({n for d in honest for n in d}):
        rows = torch.stack([d[name].double() for d in honest if name in d])
        mean[name] = rows.mean(0).float()
        std[name] = rows.std(0, correction=0).float()
    return HonestView(mean, std, clients, attackers)


def alie_z(clients: int, attackers: int) -> float:
    """Baruch et al. (2019)'s ``z_max = Phi^-1((n - s) / n)`` with ``s = floor(n / 2 + 1) - m``."""
    s = math.floor(clients / 2 + 1) - attackers
    p = min(max((clients - s) / clients, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def attack(
    delta: Mapping[str, Tensor],
    cfg: Any,
    generator: torch.Generator,
    honest_hint: Mapping[str, Tensor] | None = None,
    honest: HonestView | None = None,
) -> dict[str, Tensor]:
    """The malicious version of ``delta`` (a new dict; ``delta`` is not mutated).

    Attacks that do not touch the update (``sample_inflation``, ``payload_bomb``, ``label_flip``) return it
    unchanged.

    Args:
        delta: the client's honest update, name -> tensor.
        cfg: ``ByzantineConfig`` or ``ServerConfig``; ``None`` returns the update unchanged.
        generator: randomness for ``gaussian``.
        honest_hint: optional estimate of the honest mean; ``sign_flip`` then sends ``-scale * hint``.
        honest: the round's honest updates, required by ``alie`` and ``ipm``.
    """
    c = _config(cfg)
    if c is None:
        return dict(delta)
    if c.attack in OMNISCIENT and honest is None:
        raise ValueError(f"attack {c.attack!r} needs the honest updates of the round (honest=HonestView)")
    if c.attack == "sign_flip":
        src = delta if honest_hint is None else {k: honest_hint.get(k, v) for k, v in delta.items()}
        return {k: -c.scale * v for k, v in src.items()}
    if c.attack == "scaled":
        return {k: c.scale * v for k, v in delta.items()}
    if c.attack == "gaussian":
        return {
            k: c.scale * torch.randn(v.shape, generator=generator, dtype=v.dtype if v.is_floating_point() else None)
            for k, v in delta.items()
        }
    if c.attack == "nan":
        return {k: torch.full_like(v, float("nan")) for k, v in delta.items()}
    if c.attack == "alie":
        assert honest is not None
        z = c.scale * alie_z(honest.clients, honest.attackers)
        return {k: honest.mean[k] + z * honest.std[k] if k in honest.mean else v.clone() for k, v in delta.items()}
    if c.attack == "ipm":
        assert honest is not None
        return {k: -c.scale * honest.mean[k] if k in honest.mean else v.clone() for k, v in delta.items()}
    if c.attack in ("sample_inflation", "payload_bomb", "label_flip"):
        return dict(delta)
    raise ValueError(f"unknown attack {c.attack!r}; known: {ATTACKS}")  # pragma: no cover


def flip_labels(y: Tensor, task: Task) -> Tensor:
    """Flipped targets: class ``c`` -> ``C - 1 - c``, binary ``y`` -> ``1 - y``, regression ``y`` -> ``-y``."""
    if task.kind == "multiclass":
        return task.num_classes - 1 - y
    if task.kind == "binary":
        return 1 - y
    return -y


def poison_client(client: ClientData, cfg: Any, tasks: Sequence[Task]) -> ClientData:
    """The client an attacker trains as: its training labels flipped under ``label_flip``, else unchanged."""
    c = _config(cfg)
    if c is None or c.attack != "label_flip":
        return client
    by_name = {t.name: t for t in tasks}
    train = Split(client.train.x, {t: flip_labels(y, by_name[t]) for t, y in client.train.y.items()})
    return dataclasses.replace(client, train=train)


def payload_bomb(link: Link, names: Sequence[str]) -> bytes:
    """A well-framed payload of a few hundred bytes whose header declares :data:`BOMB_ENTRIES` float32
    entries (1 GiB) for each of ``names``: what a decoder that trusts declared sizes would allocate."""
    meta = [[n, [BOMB_ENTRIES], "torch.float32"] for n in names]
    return pack({"0.values": torch.zeros(1)}, {"chain": link.chain_spec, "tensors": meta})


def tamper_reply(reply: ClientReply, cfg: Any, link: Link, names: Sequence[str]) -> ClientReply:
    """An attacker's reply: ``sample_inflation`` claims ``scale`` times its sample counts, ``payload_bomb``
    sends :func:`payload_bomb` for its update; other attacks leave the reply as it is."""
    c = _config(cfg)
    if c is None:
        return reply
    if c.attack == "sample_inflation":
        return dataclasses.replace(
            reply,
            num_samples=c.scale * reply.num_samples,  # type: ignore[arg-type]  # a lie need not be an int
            task_samples={t: c.scale * n for t, n in reply.task_samples.items()},  # type: ignore[misc]
        )
    if c.attack == "payload_bomb":
        return dataclasses.replace(reply, payload=payload_bomb(link, names))
    return reply
