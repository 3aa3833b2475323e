"""Small shared fixtures: three tasks on synthetic data."""

from __future__ import annotations

import pytest
import torch

from fedmtl.tasks import Task

# tiny models: intra-op threads only add contention on a shared machine
torch.set_num_threads(1)

TASKS = [Task("digit", "multiclass", 4), Task("parity", "binary"), Task("value", "regression")]


def synthetic(n: int = 256, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Learnable targets: a linear 4-class problem, a binary one and a regression one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 4, generator=g)
    digit = (x @ w).argmax(1)
    parity = (digit % 2).float()
    value = x[:, :3].sum(1) + 0.1 * torch.randn(n, generator=g)
    return x, {"digit": digit, "parity": parity, "value": value}


@pytest.fixture
def tasks() -> list[Task]:
    return list(TASKS)


@pytest.fixture
def data() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return synthetic()
