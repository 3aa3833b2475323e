"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer
from fedmtl.registry import register
from fedmtl.tree import TensorTree


def aligned_weights(m: torch.Tensor) -> torch.Tensor:
    """Weights that make the task gradients' system well conditioned (condition number 1).

    ``M = V diag(lambda) V^T`` (rank ``r``), ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``, weights ``B 1``.
    """
    evals, evecs = torch.linalg.eigh(m)
    tol = evals.max() * m.shape[0] * torch.finfo(m.dtype).eps
    keep = evals > tol
    if not bool(keep.any()):
        return torch.ones(m.shape[0], dtype=m.dtype)
    lam, v = evals[keep], evecs[:, keep]
    b = lam.min().sqrt() * (v / lam.sqrt()[None, :]) @ v.T
    return b.sum(0)


class AlignedMTL(GradBalancer):
    """Align the principal components of the task-gradient matrix; returns shared weights from the Gramian."""

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        w = aligned_weights(inp.gramian().cpu())
        return Balance.for_shared(inp.losses, weights=w), state


register("balancer", "aligned_mtl", lambda cfg, tasks: AlignedMTL(), mtl_cfg.AlignedMTL)
