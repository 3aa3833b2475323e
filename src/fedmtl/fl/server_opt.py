"""Server optimisers: move the global model given the aggregated update, as chains of pure transforms.

Following optax, a :class:`Transform` is a pair of pure functions ``init(params) -> state`` and
``update(updates, state, params) -> (updates, state)`` with the state an explicit tensor tree, and
:func:`chain` composes them. A server optimiser is a chain applied to the aggregated update
``Δ = mean(local - global)`` (the negative pseudo-gradient) followed by ``params + result``:

* FedAvg    = ``scale(lr)``                                 (McMahan et al., 2017)
* FedAvgM   = ``trace(momentum) -> scale(lr)``              (Hsu et al., 2019)
* FedAdagrad/FedAdam/FedYogi = ``scale_by_adaptive(rule) -> scale(lr)`` (Reddi et al., 2021,
  "Adaptive Federated Optimization", ICLR, Algorithm 2: ``m = b1 m + (1 - b1) Δ``, ``v`` by the
  rule, step ``lr * m / (sqrt(v) + tau)``, no bias correction, ``v`` starts at ``tau**2``).

``update`` holds only the parameters some client trained this round: every transform leaves the
others, and their state, exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor

from fedmtl import registry
from fedmtl.config import training as tcfg
from fedmtl.registry import register
from fedmtl.tree import TensorTree

Params = Mapping[str, Tensor]
Updates = dict[str, Tensor]


class Transform(NamedTuple):
    """A pure update transformation with explicit state (optax's ``GradientTransformation``)."""

    init: Callable[[Params], TensorTree]
    update: Callable[[Updates, TensorTree, Params], tuple[Updates, TensorTree]]


class ServerOptimizer(Protocol):
    def init(self, params: Mapping[str, Tensor]) -> TensorTree: ...

    def step(
        self, params: Mapping[str, Tensor], update: Mapping[str, Tensor], state: TensorTree
    ) -> tuple[dict[str, Tensor], TensorTree]: ...


def scale(factor: float) -> Transform:
    """Multiply the update by ``factor`` (the server learning rate)."""

    def update(u: Updates, state: TensorTree, params: Params) -> tuple[Updates, TensorTree]:
        return {k: factor * v for k, v in u.items()}, state

    return Transform(lambda p: {}, update)


def trace(decay: float, nesterov: bool = False) -> Transform:
    """Server momentum ``m = decay * m + u``; emits ``m`` (or ``u + decay * m`` with Nesterov)."""
    if not 0 <= decay < 1:
        raise ValueError(f"momentum must be in [0, 1), got {decay}")

    def init(params: Params) -> TensorTree:
        return {"m": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(u: Updates, state: TensorTree, params: Params) -> tuple[Updates, TensorTree]:
        m = dict(cast(dict[str, Tensor], state["m"]))
        for k, v in u.items():
            m[k] = decay * (m[k] if k in m else torch.zeros_like(v)) + v
        out = {k: (v + decay * m[k] if nesterov else m[k]) for k, v in u.items()}
        return out, {"m": cast(TensorTree, m)}

    return Transform(init, update)


SecondMomentRule = Callable[[Tensor, Tensor, float], Tensor]


def adagrad_rule(v: Tensor, g2: Tensor, b2: float) -> Tensor:
    """FedAdagrad: ``v + Δ²``."""
    return v + g2


def adam_rule(v: Tensor, g2: Tensor, b2: float) -> Tensor:
    """FedAdam: ``b2 v + (1 - b2) Δ²``."""
    return b2 * v + (1 - b2) * g2


def yogi_rule(v: Tensor, g2: Tensor, b2: float) -> Tensor:
    """FedYogi (Zaheer et al., 2018): ``v - (1 - b2) Δ² sign(v - Δ²)``."""
    return v - (1 - b2) * g2 * torch.sign(v - g2)


def scale_by_adaptive(
    rule: SecondMomentRule,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> Transform:
    """Reddi et al.'s adaptive direction ``m / (sqrt(v) + tau)`` with ``v`` updated by ``rule``.

    Args:
        rule: second-moment update (:func:`adagrad_rule`, :func:`adam_rule`, :func:`yogi_rule`).
        b1: first-moment decay in [0, 1).
        b2: second-moment decay in [0, 1) (unused by Adagrad).
        tau: adaptivity > 0.
        initial_accumulator: ``v_{-1}`` (default ``tau**2``, as in the paper).
    """
    if not 0 <= b1 < 1:
        raise ValueError(f"b1 must be in [0, 1), got {b1}")
    if not 0 <= b2 < 1:
        raise ValueError(f"b2 must be in [0, 1), got {b2}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    v0 = tau**2 if initial_accumulator is None else initial_accumulator
    if v0 < 0:
        raise ValueError(f"initial_accumulator must be >= 0, got {v0}")

    def init(params: Params) -> TensorTree:
        return {
            "m": {k: torch.zeros_like(p) for k, p in params.items()},
            "v": {k: torch.full_like(p, v0) for k, p in params.items()},
        }

    def update(u: Updates, state: TensorTree, params: Params) -> tuple[Updates, TensorTree]:
        m = dict(cast(dict[str, Tensor], state["m"]))
        v = dict(cast(dict[str, Tensor], state["v"]))
        out = {}
        for k, g in u.items():
            # (the defaults are built only when missing: ``dict.get`` would allocate them every round)
            m[k] = b1 * (m[k] if k in m else torch.zeros_like(g)) + (1 - b1) * g
            v[k] = rule(v[k] if k in v else torch.full_like(g, v0), g * g, b2)
            out[k] = m[k] / (v[k].clamp(min=0).sqrt() + tau)
        return out, {"m": cast(TensorTree, m), "v": cast(TensorTree, v)}

    return Transform(init, update)


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order; the state is ``{"0": state_0, "1": state_1, ...}``."""

    def init(params: Params) -> TensorTree:
        return {str(i): t.init(params) for i, t in enumerate(transforms)}

    def update(u: Updates, state: TensorTree, params: Params) -> tuple[Updates, TensorTree]:
        new: TensorTree = {}
        for i, t in enumerate(transforms):
            u, new[str(i)] = t.update(u, state[str(i)], params)
        return u, new

    return Transform(init, update)


class TransformOptimizer:
    """A server optimiser from a transform: ``params + transform(update)`` on the updated names only."""

    def __init__(self, transform: Transform, name: str = "custom"):
        self.transform = transform
        self.name = name

    def __repr__(self) -> str:
        return f"TransformOptimizer({self.name})"

    def init(self, params: Mapping[str, Tensor]) -> TensorTree:
        return self.transform.init(params)

    def step(
        self, params: Mapping[str, Tensor], update: Mapping[str, Tensor], state: TensorTree
    ) -> tuple[dict[str, Tensor], TensorTree]:
        """Move ``params`` by the transformed ``update``; absent names keep their value and state."""
        unknown = sorted(set(update) - set(params))
        if unknown:
            raise KeyError(f"update has parameters the model lacks: {unknown[:5]}")
        for k, u in update.items():
            if u.shape != params[k].shape:
                raise ValueError(
                    f"update for {k!r} has shape {list(u.shape)}, parameter {list(params[k].shape)}"
                )
        step, new_state = self.transform.update(dict(update), state, params)
        return {k: (p + step[k].to(p.dtype) if k in step else p) for k, p in params.items()}, new_state


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise ValueError(f"server {name} must be > 0, got {value}")
    return value


def fedavg(lr: float = 1.0) -> TransformOptimizer:
    """FedAvg (McMahan et al., 2017): ``x + lr Δ``; lr = 1 is plain averaging."""
    return TransformOptimizer(scale(_positive("lr", lr)), "fedavg")


def fedavgm(lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False) -> TransformOptimizer:
    """FedAvgM (Hsu et al., 2019, "Measuring the Effects of Non-Identical Data Distribution"): ``m = βm + Δ; x + lr m``."""
    return TransformOptimizer(chain(trace(momentum, nesterov), scale(_positive("lr", lr))), "fedavgm")


def _adaptive(
    name: str, rule: SecondMomentRule, lr: float, b1: float, b2: float, tau: float, v0: float | None
) -> TransformOptimizer:
    return TransformOptimizer(
        chain(scale_by_adaptive(rule, b1, b2, tau, v0), scale(_positive("lr", lr))), name
    )


def fedadagrad(lr: float = 0.1, b1: float = 0.9, tau: float = 1e-3, initial_accumulator: float | None = None) -> TransformOptimizer:
    """FedAdagrad (Reddi et al., 2021)."""
    return _adaptive("fedadagrad", adagrad_rule, lr, b1, 0.0, tau, initial_accumulator)


def fedadam(
    lr: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> TransformOptimizer:
    """FedAdam (Reddi et al., 2021)."""
    return _adaptive("fedadam", adam_rule, lr, b1, b2, tau, initial_accumulator)


def fedyogi(
    lr: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> TransformOptimizer:
    """FedYogi (Reddi et al., 2021)."""
    return _adaptive("fedyogi", yogi_rule, lr, b1, b2, tau, initial_accumulator)


FedAvg = fedavg  # the foundation's name

register("server_optimizer", "fedavg", lambda cfg: fedavg(cfg.lr), tcfg.FedAvgServer)
register("server_optimizer", "fedavgm", lambda cfg: fedavgm(cfg.lr, cfg.momentum, cfg.nesterov), tcfg.FedAvgMServer)
register("server_optimizer", "fedadagrad", lambda cfg: fedadagrad(cfg.lr, cfg.b1, cfg.tau, cfg.initial_accumulator), tcfg.FedAdagradServer)
register("server_optimizer", "fedadam", lambda cfg: fedadam(cfg.lr, cfg.b1, cfg.b2, cfg.tau, cfg.initial_accumulator), tcfg.FedAdamServer)
register("server_optimizer", "fedyogi", lambda cfg: fedyogi(cfg.lr, cfg.b1, cfg.b2, cfg.tau, cfg.initial_accumulator), tcfg.FedYogiServer)


def build_server_optimizer(cfg: Any) -> TransformOptimizer:
    """The server optimiser a ``server.optimizer`` config describes (any registered one, by ``cfg.name``)."""
    optimizer: TransformOptimizer = registry.build("server_optimizer", cfg)
    return optimizer
