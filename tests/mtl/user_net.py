"""A user's own model, written as a user would (no fedmtl base class): imported by path in the tests."""

from __future__ import annotations

import math

from torch import nn


class Net(nn.Module):
    """A small MLP body and one head per task in ``heads``; ``forward(x)`` returns ``{task: prediction}``."""

    def __init__(self, in_features: int, outputs: dict[str, int], hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, k) for t, k in outputs.items()})

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.body(x)
        return {t: h(z).squeeze(-1) if h.out_features == 1 else h(z) for t, h in self.heads.items()}


def make(input_shape, tasks, hidden: int = 32) -> Net:  # noqa: ANN001
    """The factory a config names (``model: {name: import, target: "mtl.user_net:make"}``)."""
    return Net(math.prod(input_shape), {t.name: t.output_dim for t in tasks}, hidden)
