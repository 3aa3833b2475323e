"""Aggregation: stacked updates and weights in, one update out; applied per parameter group.

An aggregator is a pure callable ``(updates [N, P], weights [N]) -> [P]``. :func:`aggregate_by_group`
applies it separately to each parameter group, over only the clients that sent that group: the
shared trunk over the whole cohort, each task head over its holders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedmtl import registry
from fedmtl.config import training as tcfg
from fedmtl.fl.update import ClientUpdate
from fedmtl.registry import register

Aggregator = Callable[[Tensor, Tensor], Tensor]


def check_stack(updates: Tensor, weights: Tensor) -> None:
    """Shapes and weights an aggregator can use; errors name the offending value."""
    if updates.dim() != 2:
        raise ValueError(f"updates must be [clients, params], got shape {list(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must be [{updates.shape[0]}], got shape {list(weights.shape)}")
    if updates.shape[0] == 0:
        raise ValueError("cannot aggregate zero updates")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")


def weighted_mean(updates: Tensor, weights: Tensor) -> Tensor:
    """FedAvg: ``sum_i w_i u_i / sum_i w_i``."""
    check_stack(updates, weights)
    w = weights.to(updates.dtype)
    return (w / w.sum()) @ updates


def aggregate_by_group(
    updates: Sequence[ClientUpdate],
    param_groups: Mapping[str, Sequence[str]],
    aggregator: Aggregator = weighted_mean,
) -> dict[str, Tensor]:
    """Aggregate each group among the updates that carry it; groups nobody sent are left out.

    Args:
        updates: the round's client updates.
        param_groups: group name -> its parameter names (the global model's grouping).
        aggregator: applied to each group's ``[holders, group_size]`` stack.

    Returns:
        Parameter name -> aggregated delta, for every parameter of every group with at least one holder.
    """
    out: dict[str, Tensor] = {}
    for group, names in param_groups.items():
        holders = [u for u in updates if all(n in u.delta for n in names)]
        partial = [u.client_id for u in updates if any(n in u.delta for n in names) and u not in holders]
        if partial:
            raise ValueError(f"clients {partial} sent only part of parameter group {group!r}")
        holders = [u for u in holders if u.weight_for(group) > 0]
        if not holders or not names:
            continue
        stack = torch.stack([torch.cat([u.delta[n].reshape(-1) for n in names]) for u in holders])
        weights = torch.tensor([u.weight_for(group) for u in holders], dtype=stack.dtype)
        flat = aggregator(stack, weights)
        offset = 0
        for n in names:
            like = holders[0].delta[n]
            out[n] = flat[offset : offset + like.numel()].view_as(like)
            offset += like.numel()
    return out


def build_aggregator(cfg: Any) -> Aggregator:
    """The aggregator a ``server.aggregator`` config describes (any registered aggregator, by ``cfg.name``)."""
    aggregator: Aggregator = registry.build("aggregator", cfg)
    return aggregator


register("aggregator", "mean", lambda cfg: weighted_mean, tcfg.WeightedMean)
