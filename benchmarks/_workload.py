"""The benchmark workloads' data, built once and shared by every system (same rows, same split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Workload:
    name: str
    num_clients: int
    epochs: int
    lr: float
    rounds: int
    batch_size: int = 32
    hidden: tuple[int, ...] = (256, 256)


W1 = Workload("W1", num_clients=100, epochs=5, lr=0.3, rounds=20)
W2 = Workload("W2", num_clients=1000, epochs=1, lr=0.05, rounds=2)
W2_10K = Workload("W2-10k", num_clients=10_000, epochs=1, lr=0.05, rounds=2)
SMOKE = Workload("smoke", num_clients=10, epochs=1, lr=0.05, rounds=2)


def mnist1d(num_samples: int = 12_000, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-1D generated offline (never ``get_dataset()``: it tries the network first)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    d = make_dataset(args)
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def iid_split(n: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle rows and deal them out evenly (9,600 rows: 96 each for 100 clients, 9-10 for 1,000 and 10,000 ... )."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def mlp(hidden: tuple[int, ...], in_dim: int = 40, out_dim: int = 10) -> torch.nn.Sequential:
    """The hand-written baselines' model: Linear layers with ReLU between them (weight, bias per layer)."""
    dims = [in_dim, *hidden, out_dim]
    mods: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def init_params(
    hidden: tuple[int, ...], in_dim: int = 40, out_dim: int = 10, seed: int = 0
) -> list[torch.Tensor]:
    """The same starting MLP for every system: torch's default Linear init under ``seed``."""
    torch.manual_seed(seed)
    return [t.detach().clone() for t in mlp(hidden, in_dim, out_dim).parameters()]
