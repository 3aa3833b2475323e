"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020)."""

from __future__ import annotations

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


register("balancer", "pcgrad", lambda cfg, tasks: PCGrad(), mtl_cfg.PCGrad)
