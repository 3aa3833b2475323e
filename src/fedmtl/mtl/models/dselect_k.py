"""DSelect-k gates (Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture of Experts", NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.moe import MMoEModel
from fedmtl.registry import register
from fedmtl.tasks import Task


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """0 below ``-gamma/2``, 1 above ``gamma/2``, the cubic ``-2t^3/gamma^3 + 3t/(2 gamma) + 1/2`` between."""
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    """``k`` differentiable single-expert selectors (binary encodings through smooth steps), mixed by a softmax.

    Input-dependent (per-example) gate. With ``E`` not a power of two, the ``2^m`` codes are folded
    onto the experts (code ``c`` selects expert ``c mod E``), so the weights always sum to one.
    """

    def __init__(self, in_dim: int, num_experts: int, k: int, gamma: float = 1.0):
        super().__init__()
        self.num_experts, self.k, self.gamma = num_experts, k, gamma
        self.bits = max(1, math.ceil(math.log2(num_experts)))
        self.z = nn.Linear(in_dim, k * self.bits)
        self.w = nn.Linear(in_dim, k)
        n_codes = 2**self.bits
        codes = torch.tensor([[(i >> b) & 1 for b in range(self.bits)] for i in range(n_codes)], dtype=torch.float32)
        self.codes: Tensor
        self.fold: Tensor
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("fold", torch.eye(num_experts)[torch.arange(n_codes) % num_experts], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Expert weights ``[N, E]`` summing to 1."""
        s = smooth_step(self.z(x).view(-1, self.k, self.bits), self.gamma)  # [N, k, m]
        # r[n, k, e] = prod_b (s if code_b(e) else 1 - s)
        c = self.codes
        r = torch.prod(s[:, :, None, :] * c + (1 - s[:, :, None, :]) * (1 - c), dim=-1)
        return torch.einsum("nk,nkc,ce->ne", torch.softmax(self.w(x), -1), r, self.fold)


class DSelectKModel(MMoEModel):
    """MMoE with DSelect-k gates: each task picks (softly, converging to) ``k`` of the shared experts."""

    def __init__(self, input_shape: Sequence[int], tasks: Sequence[Task], num_experts: int = 4, k: int = 2, expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (), gamma: float = 1.0):
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be in [1, num_experts={num_experts}], got {k}")
        self.k, self.gamma = k, gamma
        super().__init__(input_shape, tasks, num_experts, expert_hidden, tower_hidden)

    def make_gate(self, in_dim: int, num_experts: int) -> nn.Module:
        return DSelectKGate(in_dim, num_experts, self.k, self.gamma)

    def expert_weights(self, gate: nn.Module, x: Tensor) -> Tensor:
        """The DSelect-k gate's weights, already on the simplex."""
        return gate(x)

register(
    "model",
    "dselect_k",
    lambda cfg, shape, tasks: DSelectKModel(shape, tasks, cfg.num_experts, cfg.k, cfg.expert_hidden, cfg.tower_hidden, cfg.gamma),
    model_cfg.DSelectK,
)
