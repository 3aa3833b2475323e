"""The Balancer protocol: per-task losses (and, when needed, per-task gradients) in, an update out.

A balancer never calls ``backward()`` and never writes ``.grad``: the training step
(:mod:`fedmtl.mtl.objective`) owns autograd. Its state is an explicit tensor tree, returned anew
on every call (optax-style), so it can live in a federated client's state and in checkpoints.

Per-task gradients ("``grads``", shape ``[T, P]``) are the rows of the Jacobian of the task losses
with respect to the shared coordinates: either the shared *parameters* (exact; one batched reverse
pass) or the shared *representation* (MGDA-UB-style upper bound; cheap, reverse passes through the
heads only). The objective decides which from its configuration; a balancer whose state depends on
``P`` declares ``representation_ok = False`` because ``P`` then changes with the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from fedmtl.tree import TensorTree

Requirement = Literal["losses", "shared_grads"]
GradSource = Literal["parameters", "representation"]


@dataclass(frozen=True)
class BalanceInput:
    """What a balancer sees at one training step.

    Attributes:
        losses: detached task losses, shape ``[T]``, in the order of the objective's task list.
        grads: per-task gradients of the shared coordinates, flattened, shape ``[T, P]``;
            present only when the balancer's ``requires`` is ``"shared_grads"``.
        step: the local step counter (0-based) within the current objective state.
        generator: the source of randomness (RLW, GradDrop, PCGrad's order); never the global RNG.
        epoch: the local epoch (DWA averages losses per epoch).
        gram: ``grads grads^T`` in float64 when the caller computed it already (the vectorised engine
            computes every client's in one batched product); read it through :meth:`gramian`.
    """

    losses: Tensor
    grads: Tensor | None
    step: int
    generator: torch.Generator | None = None
    epoch: int = 0
    gram: Tensor | None = None

    def gramian(self) -> Tensor:
        """``G G^T`` of the per-task gradients in float64: the given :attr:`gram`, or computed here."""
        if self.gram is not None:
            return self.gram
        assert self.grads is not None, "a gradient balancer needs per-task gradients"
        return gramian(self.grads)


@dataclass(frozen=True)
class Balance:
    """A balancer's answer.

    Attributes:
        weights: loss weights ``[T]``; task-specific (and local) parameters receive ``sum_t w_t grad L_t``.
        shared_direction: when given, the gradient to use for the shared coordinates (flattened
            ``[P]``, same coordinates as ``BalanceInput.grads``); it overrides ``shared_weights``.
        shared_weights: when given, the shared coordinates receive ``sum_t s_t grad L_t`` instead
            (gradient-balancing methods whose output is a combination of the task gradients).
    """

    weights: Tensor
    shared_direction: Tensor | None = None
    shared_weights: Tensor | None = None

    @classmethod
    def for_shared(cls, losses: Tensor, *, weights: Tensor | np.ndarray | None = None, direction: Tensor | None = None) -> Balance:
        """A gradient balancer's answer: the task-specific parameters get the plain sum of the task
        gradients (every loss weight 1), the shared ones the balanced combination ``weights`` of the task
        gradients (a tensor or a solver's NumPy array) or the ``direction`` itself."""
        shared = None if weights is None else torch.as_tensor(weights).to(losses)
        return cls(weights=torch.ones_like(losses), shared_direction=direction, shared_weights=shared)

    def shared_gradient(self, grads: Tensor) -> Tensor:
        """The shared coordinates' gradient from the per-task ``grads`` ``[T, P]``: the direction when
        given, else ``sum_t s_t grads_t`` with the shared weights (or, without them, the loss weights)."""
        if self.shared_direction is not None:
            return self.shared_direction.to(grads)
        return (self.shared_weights if self.shared_weights is not None else self.weights).to(grads) @ grads


class Balancer(Protocol):
    """Loss weighting or gradient balancing."""

    requires: Requirement

    def init(self, num_tasks: int) -> TensorTree:
        """The initial state for ``num_tasks`` tasks."""
        ...

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        """The balance for this step and the next state."""
        ...


class LossBalancer:
    """Base for balancers that only look at the losses (no gradients)."""

    requires: Requirement = "losses"
    representation_ok: bool = True
    forced_source: GradSource | None = None

    def init(self, num_tasks: int) -> TensorTree:
        return {}


class GradBalancer:
    """Base for balancers that need per-task gradients of the shared coordinates."""

    requires: Requirement = "shared_grads"
    representation_ok: bool = True
    forced_source: GradSource | None = None

    def init(self, num_tasks: int) -> TensorTree:
        return {}


def leaf(tree: TensorTree, key: str) -> Tensor:
    """``tree[key]``, checked to be a tensor (state entries of balancers are flat)."""
    value = tree[key]
    if not isinstance(value, Tensor):
        raise TypeError(f"state entry {key!r} is a sub-tree, expected a tensor")
    return value


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """Constructor validation with a message naming the value."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")
    return float(value)


def gramian(grads: Tensor) -> Tensor:
    """``G G^T`` in float64 (the ``[T, T]`` matrix most gradient methods work from)."""
    g = grads.double()
    return g @ g.T

