"""The server's error feedback: momentum, error accumulation and a top-k step on the server (FetchSGD's server).

Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez & Arora, 2020, "FetchSGD: Communication-Efficient
Federated Learning with Sketching", ICML, Algorithm 1 (here without the sketch: the server unsketches nothing,
it aggregates the decoded updates): per tensor, with ``Δ`` the aggregated update,

* ``u <- ρ u + Δ``          (server momentum)
* ``e <- e + lr u``         (error accumulation)
* ``s = top-k(e)``          (the ``⌈fraction · d⌉`` largest entries of ``e``), ``x <- x + s``
* ``e <- e - s``, and ``u <- 0`` where ``s`` is non-zero with ``momentum_masking`` (the paper's line 12;
  Lin et al., 2018, DGC's momentum-factor masking).

Why: error feedback kept on the server sees every round, where a client's residual waits for the client's next
turn (~1 / participation rounds), and the model then changes on at most ``k`` coordinates a round, so the
difference between the model and any client's last copy is sparse: compressed downlinks
(``comm.downlink_delta``) carry it nearly exactly. Without masking the emitted steps plus ``e`` always add up to
FedAvgM's own displacement (``Σ s + e = lr Σ u``): the step is FedAvgM with some coordinates delayed.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from fedmtl.config.registered import ComponentConfig
from fedmtl.fl.server_opt import Params, Transform, TransformOptimizer, Updates
from fedmtl.registry import register
from fedmtl.tree import TensorTree


class SparseFedAvgMServer(ComponentConfig):
    """FedAvgM whose step keeps only the top ``fraction`` of the server's accumulated error (FetchSGD's server,
    Rothchild et al., 2020): the model changes on few coordinates a round, so compressed downlinks are nearly exact."""

    name: Literal["sparse_fedavgm"] = "sparse_fedavgm"
    lr: PositiveFloat = 1.0
    momentum: float = Field(default=0.9, ge=0, lt=1)
    fraction: float = Field(default=0.05, gt=0, le=1, description="Entries of each tensor the model moves on per round.")
    momentum_masking: bool = Field(default=True, description="Zero the momentum where the step moved the model.")


def _kept(fraction: float, numel: int) -> int:
    return min(numel, max(1, math.ceil(fraction * numel)))


def sparse_momentum(lr: float, momentum: float, fraction: float, momentum_masking: bool = True) -> Transform:
    """FetchSGD's server step as a transform: state ``{"u": momentum, "e": accumulated error}`` per tensor."""
    if lr <= 0:
        raise ValueError(f"server lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")

    def init(params: Params) -> TensorTree:
        return {"u": {k: torch.zeros_like(v) for k, v in params.items()}, "e": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(du: Updates, state: TensorTree, params: Params) -> tuple[Updates, TensorTree]:
        u = dict(cast(dict[str, Tensor], state["u"]))
        e = dict(cast(dict[str, Tensor], state["e"]))
        out = {}
        for k, d in du.items():
            uk = momentum * (u[k] if k in u else torch.zeros_like(d)) + d
            ek = (e[k] if k in e else torch.zeros_like(d)) + lr * uk
            flat = ek.reshape(-1)
            idx = torch.topk(flat.abs(), _kept(fraction, flat.numel()), sorted=False).indices
            step = torch.zeros_like(flat)
            step[idx] = flat[idx]
            out[k] = step.reshape(d.shape)
            e[k] = ek - out[k]
            if momentum_masking:
                uk = uk.reshape(-1).clone()
                uk[idx] = 0.0
                uk = uk.reshape(d.shape)
            u[k] = uk
        return out, {"u": cast(TensorTree, u), "e": cast(TensorTree, e)}

    return Transform(init, update)


def sparse_fedavgm(lr: float = 1.0, momentum: float = 0.9, fraction: float = 0.05, momentum_masking: bool = True) -> TransformOptimizer:
    """FedAvgM with the server's error feedback and a top-k step (:func:`sparse_momentum`)."""
    return TransformOptimizer(sparse_momentum(lr, momentum, fraction, momentum_masking), "sparse_fedavgm")


register(
    "server_optimizer",
    "sparse_fedavgm",
    lambda cfg: sparse_fedavgm(cfg.lr, cfg.momentum, cfg.fraction, cfg.momentum_masking),
    SparseFedAvgMServer,
)
