"""Bring your own model: a plain torch.nn.Module, trained federated on the vectorised engine.

    python examples/own_model.py [--rounds 20]
"""

from __future__ import annotations

import argparse

from torch import nn

import fedmtl


class Net(nn.Module):
    """A 1-D CNN body shared by every client and one head per task (aggregated among that task's holders)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(channels, channels, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(8), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({"digit": nn.Linear(8 * channels, 10), "parity": nn.Linear(8 * channels, 1)})

    def forward(self, x):  # noqa: ANN001, ANN201 - x: [batch, 40] MNIST-1D signals
        z = self.body(x.unsqueeze(1))
        return {task: head(z) for task, head in self.heads.items()}


def main(rounds: int = 20, out: str = "runs") -> fedmtl.Results:
    config = {
        "data": {"source": {"name": "mnist1d", "tasks": ["digit", "parity"], "num_samples": 4000}, "num_clients": 40,
                 "partition": {"name": "dirichlet", "alpha": 0.5}},
        "client": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
        "server": {"rounds": rounds, "fraction": 0.25},
        "mtl": {"balancer": {"name": "pcgrad"}},      # any balancer, algorithm, codec: all on the fast path
        "output": {"dir": out, "name": "own-model", "overwrite": True},
    }
    results = fedmtl.Experiment(config, model=Net()).run()
    print(results.summary["engine"], {t: round(m["accuracy"], 3) for t, m in results.summary["final_global"].items()})
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    main(ap.parse_args().rounds)
