"""The Balancer protocol: per-task losses (and, when needed, per-task gradients) in, an update out.

A balancer never calls ``backward()`` and never writes ``.grad``: the training step
(:mod:`fedmtl.mtl.objective`) owns autograd. Its state is an explicit tensor tree, returned anew
on every call (optax-style), so it can live in a federated client's state and in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from fedmtl.tree import TensorTree

Requirement = Literal["losses", "shared_grads"]


@dataclass(frozen=True)
class BalanceInput:
    """What a balancer sees at one training step.

    Attributes:
        losses: detached task losses, shape ``[T]``, in the order of the objective's task list.
        grads: per-task gradients of the shared parameters, flattened, shape ``[T, P]``;
            present only when the balancer's ``requires`` is ``"shared_grads"``.
        step: the local step counter (0-based) within the current objective state.
        generator: the source of randomness (RLW, GradDrop, PCGrad's order); never the global RNG.
    """

    losses: Tensor
    grads: Tensor | None
    step: int
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Balance:
    """A balancer's answer.

    Attributes:
        weights: loss weights ``[T]``; task-specific parameters receive ``w_t * grad L_t``.
        shared_direction: when given, the gradient to use for the shared parameters (flattened ``[P]``);
            when ``None`` the shared parameters receive ``sum_t w_t grad L_t``.
    """

    weights: Tensor
    shared_direction: Tensor | None = None


class Balancer(Protocol):
    """Loss weighting or gradient balancing."""

    requires: Requirement

    def init(self, num_tasks: int) -> TensorTree:
        """The initial state for ``num_tasks`` tasks."""
        ...

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        """The balance for this step and the next state."""
        ...
