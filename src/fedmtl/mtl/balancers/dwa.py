"""Dynamic weight average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019)."""

from __future__ import annotations

import torch

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, LossBalancer, check_positive, leaf
from fedmtl.registry import options, register
from fedmtl.tree import TensorTree


class DWA(LossBalancer):
    """``w_t = T softmax(r / tau)_t`` with ``r_t = L_t(e-1) / L_t(e-2)``, ``L_t(e)`` the mean loss of epoch ``e``.

    Weights are 1 during the first two epochs. The state keeps the running sum of the current
    epoch's losses and the means of the two previous epochs.
    """

    def __init__(self, temperature: float = 2.0):
        self.temperature = check_positive("temperature", temperature)

    def init(self, num_tasks: int) -> TensorTree:
        return {
            "epoch": torch.tensor(-1),
            "sum": torch.zeros(num_tasks),
            "count": torch.zeros(()),
            "history": torch.zeros(2, num_tasks),
            "seen": torch.tensor(0),
        }

    def __call__(self, inp: BalanceInput, state: TensorTree) -> tuple[Balance, TensorTree]:
        epoch, s, count = int(leaf(state, "epoch")), leaf(state, "sum"), leaf(state, "count")
        hist, seen = leaf(state, "history"), int(leaf(state, "seen"))
        if epoch >= 0 and inp.epoch != epoch and float(count) > 0:  # close the previous epoch
            hist = torch.stack([hist[1], s / count])
            seen += 1
            s, count = torch.zeros_like(s), torch.zeros_like(count)
        t = inp.losses.numel()
        if seen >= 2:
            r = hist[1] / hist[0].clamp_min(1e-12)
            w = t * torch.softmax(r / self.temperature, 0)
        else:
            w = torch.ones(t)
        new: TensorTree = {
            "epoch": torch.tensor(inp.epoch),
            "sum": s + inp.losses.detach().float().cpu(),
            "count": count + 1,
            "history": hist,
            "seen": torch.tensor(seen),
        }
        return Balance(weights=w.to(inp.losses)), new


register("balancer", "dwa", lambda cfg, tasks: DWA(**options(cfg)), mtl_cfg.DWA, loss_only=True)
