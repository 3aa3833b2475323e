"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def pcgrad_coefficients(m: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Coefficients ``C`` with projected gradients ``G_pc = C G``, from the Gramian ``M = G G^T`` alone.

    For each task ``i`` (other tasks visited in ``orders[i]``), whenever ``<g_i^pc, g_j> < 0`` the
    component along ``g_j`` is removed: ``g_i^pc -= <g_i^pc, g_j> / ||g_j||^2 g_j``.
    """
    t = m.shape[0]
    mm = m.double().numpy()
    c = np.eye(t)
    for i in range(t):
        for j in orders[i]:
            if j == i:
                continue
            dot = c[i] @ mm[:, j]
            if dot < 0:
                c[i, j] -= dot / (mm[j, j] + 1e-20)
    return torch.from_numpy(c).to(m.dtype)


def pcgrad_coefficients_batched(m: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """:func:`pcgrad_coefficients` for ``B`` clients at once: Gramians ``m [B, T, T]``, visiting orders
    ``orders [B, T, T]`` (``orders[b, i]`` is client ``b``'s order for task ``i``); the same projections,
    as tensor operations over the clients (``T^2`` steps, not ``B T^2``)."""
    b, t, _ = m.shape
    m = m.double()
    c = torch.eye(t, dtype=torch.float64, device=m.device).expand(b, t, t).clone()
    rows = torch.arange(b, device=m.device)
    for i in range(t):
        for p in range(t):
            j = orders[:, i, p]
            dot = (c[:, i, :] * m[rows, :, j]).sum(1)
            step = torch.where((j != i) & (dot < 0), dot / (m[rows, j, j] + 1e-20), torch.zeros_like(dot))
            c[rows, i, j] -= step
    return c


class PCGrad(GradBalancer):
    """Project each task gradient off the normal plane of every conflicting one, in random order; sum.

    Computed entirely on the ``[T, T]`` Gramian: the projected sum is ``sum_t s_t g_t`` with
    ``s = 1^T C`` (``C`` from :func:`pcgrad_coefficients`), returned as shared weights. Task heads
    keep their own gradients (weight 1), as in the reference implementation.
    """

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        t = inp.losses.numel()
        gen = inp.generator or torch.Generator().manual_seed(inp.step)
        orders = [torch.randperm(t, generator=gen, device=gen.device).tolist() for _ in range(t)]
        c = pcgrad_coefficients(inp.gramian().cpu(), orders)
        return Balance.for_shared(inp.losses, weights=c.sum(0)), state

    def batch_key(self) -> object:
        """PCGrad has no settings: every client's projection can be computed in one :meth:`balance_batch` call."""
        return "pcgrad"

    def balance_batch(
        self, grams: torch.Tensor, steps: Sequence[int], generators: Sequence[torch.Generator | None], states: Sequence[TensorTree]
    ) -> tuple[torch.Tensor, list[TensorTree]]:
        """Every client's shared weights ``[B, T]`` from their Gramians ``[B, T, T]`` at once (each client's
        orders drawn from its own generator, as :meth:`__call__` draws them); PCGrad keeps no state."""
        t = grams.shape[1]
        orders = []
        for gen, step in zip(generators, steps):
            g = gen or torch.Generator().manual_seed(step)
            orders.append([torch.randperm(t, generator=g, device=g.device).tolist() for _ in range(t)])
        c = pcgrad_coefficients_batched(grams.cpu(), torch.tensor(orders).reshape(len(orders), t, t))
        return c.sum(1), list(states)


register("balancer", "pcgrad", lambda cfg, tasks: PCGrad(), mtl_cfg.PCGrad)
