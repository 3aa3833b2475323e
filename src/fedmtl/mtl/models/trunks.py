"""Shared trunks: the part of a hard-sharing model every task uses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from fedmtl import registry
from fedmtl.config import model as model_cfg
from fedmtl.registry import register

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int | None = None, activation: str = "relu", dropout: float = 0.0, norm: str = "none"
) -> nn.Sequential:
    """Linear-activation stack; ``out_dim`` adds a final linear layer with no activation.

    ``norm="batch"`` puts a ``BatchNorm1d`` between each hidden Linear and its activation.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r} not in {sorted(_ACTIVATIONS)}")
    if norm not in ("none", "batch"):
        raise ValueError(f"norm {norm!r} not in ['batch', 'none']")
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class MLPTrunk(nn.Module):
    """Flatten the input and apply an MLP."""

    def __init__(
        self, input_shape: Sequence[int], hidden: Sequence[int], activation: str = "relu", dropout: float = 0.0, norm: str = "none"
    ):
        super().__init__()
        self.net = mlp(math.prod(input_shape), hidden, activation=activation, dropout=dropout, norm=norm)
        self.out_dim = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class WindowMaxPool1d(nn.MaxPool1d):
    """``nn.MaxPool1d(k)`` (stride ``k``, no padding) computed as a maximum over a view of the input split into
    windows: the same values, and the same gradient (to the first maximum of each window).

    Why: ``max_pool1d`` wants a contiguous input, and under ``vmap`` (the vectorised engine runs every client's
    convolution as one) the convolution's output is not, so each call copied it; and its CPU kernel is slower
    than a reduction even then. Measured on CPU, one thread, 30 clients of 16 rows, the demo's two Conv1d blocks:
    forward and backward 14.5 ms with ``max_pool1d``, 9.8 ms with this.
    """

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size)
        self.window = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        k = self.window
        windows = x.shape[-1] // k
        if windows == 0:
            return F.max_pool1d(x, k)  # too short for one window: max_pool1d's own error
        return x[..., : windows * k].unflatten(-1, (windows, k)).max(-1).values


class CNN1DTrunk(nn.Module):
    """Conv1d blocks then a dense layer; accepts ``[N, L]`` or ``[N, C, L]``."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], kernel_size: int = 5, hidden: int = 128):
        super().__init__()
        in_ch, length = (1, input_shape[0]) if len(input_shape) == 1 else (input_shape[0], input_shape[1])
        layers: list[nn.Module] = []
        c = in_ch
        for ch in channels:
            layers += [nn.Conv1d(c, ch, kernel_size, padding=kernel_size // 2), nn.ReLU(), WindowMaxPool1d(2)]
            c = ch
            length = max(length // 2, 1)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c * length, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.fc(self.conv(x).flatten(1))


class CNN2DTrunk(nn.Module):
    """Conv2d blocks then a dense layer; accepts ``[N, H, W]`` or ``[N, C, H, W]``."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], hidden: int = 128):
        super().__init__()
        if len(input_shape) == 2:
            in_ch, h, w = 1, input_shape[0], input_shape[1]
        elif len(input_shape) == 3:
            in_ch, h, w = input_shape
        else:
            raise ValueError(f"cnn2d needs image inputs [H, W] or [C, H, W], got feature shape {list(input_shape)}")
        layers: list[nn.Module] = []
        c = in_ch
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = ch
            h, w = max(h // 2, 1), max(w // 2, 1)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.fc(self.conv(x).flatten(1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["CNN1DTrunk", "CNN2DTrunk", "MLPTrunk", "count_parameters", "mlp"]

def build_trunk(cfg: BaseModel, input_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """A trunk module and the width of the representation it produces (any registered trunk, by ``cfg.name``)."""
    trunk, width = registry.build("trunk", cfg, input_shape)
    return trunk, int(width)


def _sized(trunk: nn.Module) -> tuple[nn.Module, int]:
    return trunk, int(trunk.out_dim)  # type: ignore[arg-type]


register("trunk", "mlp", lambda cfg, shape: _sized(MLPTrunk(shape, cfg.hidden, cfg.activation, cfg.dropout, cfg.norm)), model_cfg.MLPTrunk)
register("trunk", "cnn1d", lambda cfg, shape: _sized(CNN1DTrunk(shape, cfg.channels, cfg.kernel_size, cfg.hidden)), model_cfg.CNN1DTrunk)
register("trunk", "cnn2d", lambda cfg, shape: _sized(CNN2DTrunk(shape, cfg.channels, cfg.hidden)), model_cfg.CNN2DTrunk)
