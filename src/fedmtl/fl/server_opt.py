"""Server optimisers: move the global model given the aggregated update.

optax-style pure transforms: ``init(params) -> state`` and
``step(params, update, state) -> (params, state)``, with the state an explicit tensor tree. The
aggregated ``update`` is the mean of ``local - global`` (the negative pseudo-gradient) and holds only
the parameters some client trained this round; the others stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from fedmtl.tree import TensorTree


class ServerOptimizer(Protocol):
    def init(self, params: Mapping[str, Tensor]) -> TensorTree: ...

    def step(
        self, params: Mapping[str, Tensor], update: Mapping[str, Tensor], state: TensorTree
    ) -> tuple[dict[str, Tensor], TensorTree]: ...


class FedAvg:
    """``params + lr * update``; lr = 1 is McMahan et al.'s averaging."""

    def __init__(self, lr: float = 1.0):
        if lr <= 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        self.lr = lr

    def init(self, params: Mapping[str, Tensor]) -> TensorTree:
        return {}

    def step(
        self, params: Mapping[str, Tensor], update: Mapping[str, Tensor], state: TensorTree
    ) -> tuple[dict[str, Tensor], TensorTree]:
        unknown = sorted(set(update) - set(params))
        if unknown:
            raise KeyError(f"update has parameters the model lacks: {unknown[:5]}")
        new = {k: (v + self.lr * update[k] if k in update else v) for k, v in params.items()}
        return new, state


def build_server_optimizer(cfg: object) -> ServerOptimizer:
    """The server optimiser a ``server.optimizer`` config describes."""
    from fedmtl.config import training as tcfg

    if isinstance(cfg, tcfg.FedAvgServer):
        return FedAvg(cfg.lr)
    raise TypeError(f"unknown server optimizer config {cfg!r}")  # pragma: no cover
