"""L2 clipping of a client's whole update (the sensitivity bound of client-level DP).

McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language Models": each
client's update, over *all* parameters it sends (shared trunk and task heads together), is scaled
to norm at most C, so one client changes the concatenated per-group sums by at most C in L2.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def global_norm(delta: Mapping[str, Tensor]) -> float:
    """L2 norm of all tensors of ``delta`` taken as one vector (computed in float64)."""
    total = sum(
        (t.detach().to(torch.float64).pow(2).sum() for t in delta.values()),
        torch.zeros((), dtype=torch.float64),
    )
    return float(total.sqrt())


def clip_update(delta: Mapping[str, Tensor], clip_norm: float) -> tuple[dict[str, Tensor], float]:
    """Scale ``delta`` by ``min(1, clip_norm / ||delta||)``.

    Args:
        delta: parameter name -> tensor (not modified).
        clip_norm: C > 0.

    Returns:
        The clipped copy and the norm *before* clipping.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = global_norm(delta)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (v.detach().to(torch.float64) * scale).to(v.dtype) for k, v in delta.items()}, norm
