"""Bring your own data: torch Datasets, one per client, with some labels missing.

Each item is ``(x, {task: y})``; here every third row of a client has no ``parity`` label, so it trains the
``digit`` head (and the shared body) only.

    python examples/own_datasets.py [--rounds 10]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import Dataset

import fedmtl


class Site(Dataset):
    """One client's private rows (a synthetic stand-in for a hospital's table)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.digit = torch.randint(0, 10, (n,), generator=g)
        self.x = torch.randn(n, 20, generator=g) * 0.5 + torch.nn.functional.one_hot(self.digit % 10, 20).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        y = {"digit": self.digit[i]}
        if i % 3:
            y["parity"] = self.digit[i] % 2  # missing on every third row
        return self.x[i], y


def main(rounds: int = 10, out: str = "runs") -> fedmtl.Results:
    kinds = {"digit": "multiclass", "parity": "binary"}
    source = fedmtl.from_datasets({f"site{i}": Site(60 + 20 * i, i) for i in range(6)}, kinds,
                                  holdout=Site(200, 99), num_classes={"digit": 10})
    config = {
        "data": {"source": {"name": "arrays"}, "partition": {"name": "natural"}},
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [32]}},
        "client": {"epochs": 5, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
        "server": {"rounds": rounds, "fraction": 1.0},
        "output": {"dir": out, "name": "own-datasets", "overwrite": True},
    }
    results = fedmtl.Experiment(config, source=source).run()
    print({t: round(m["accuracy"], 3) for t, m in results.summary["final_global"].items()})
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=10)
    main(ap.parse_args().rounds)
