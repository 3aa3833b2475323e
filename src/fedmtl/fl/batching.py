"""The minibatch plan of local training, shared by every engine so they see the same batches."""

from __future__ import annotations

import torch
from torch import Tensor


def batch_plan(num_rows: int, batch_size: int, epochs: int, generator: torch.Generator) -> list[list[Tensor]]:
    """Per epoch, a fresh permutation cut into batches of ``batch_size`` (the last one may be smaller).

    Returns ``plan[epoch][step] -> row indices``.
    """
    if num_rows < 1:
        raise ValueError(f"a client needs at least one training row, got {num_rows}")
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(num_rows, generator=generator)
        plan.append([perm[lo : lo + batch_size] for lo in range(0, num_rows, batch_size)])  # Tensor.split's batches
    return plan
