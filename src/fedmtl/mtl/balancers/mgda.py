"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch

from fedmtl.mtl.balancers._solvers import min_norm_weights
from fedmtl.mtl.balancers.base import Balance, BalanceInput, GradBalancer, GradSource, gramian
from fedmtl.tree import TensorTree

Normalization = Literal["none", "l2", "loss", "loss+"]


def normalizers(grads: torch.Tensor, losses: torch.Tensor, how: Normalization) -> torch.Tensor:
    """Per-task gradient scales ``[T]`` (``g_t / n_t`` is what the solver sees), as in the paper's code."""
    if how == "l2":
        return grads.norm(dim=1).clamp_min(1e-12)
    if how == "loss":
        return losses.clamp_min(1e-12)
    if how == "loss+":
        return (losses * grads.norm(dim=1)).clamp_min(1e-12)
    return torch.ones_like(losses)


class MGDA(GradBalancer):
    """The min-norm point of the convex hull of the (normalised) task gradients: a common descent direction.

    Solved on the ``[T, T]`` Gramian by Frank-Wolfe (closed form for two tasks). Returns shared
    weights ``w_t / n_t`` (so the shared gradient is the min-norm point); heads keep weight 1.
    """

    def __init__(self, normalization: Normalization = "none"):
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"normalization must be one of none, l2, loss, loss+; got {normalization!r}")
        self.normalization = normalization

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        assert inp.grads is not None
        g = inp.grads.detach()
        n = normalizers(g.double(), inp.losses.detach().double().to(g.device), self.normalization)
        m = gramian(g) / (n[:, None] * n[None, :])
        w = torch.as_tensor(min_norm_weights(m.cpu().numpy())).to(n) / n
        return Balance(weights=torch.ones_like(inp.losses), shared_weights=w.to(inp.losses)), state


class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients of the shared representation (an upper bound; one trunk backward)."""

    forced_source: GradSource | None = "representation"
