"""Per-group FedAvg against hand-computed weighted means: heads only among their holders."""

from __future__ import annotations

import torch

from fedmtl.fl.aggregation import aggregate_by_group, weighted_mean
from fedmtl.fl.server_opt import FedAvg
from fedmtl.fl.update import ClientUpdate

GROUPS = {"shared": ["trunk.w"], "task:a": ["heads.a.w"], "task:b": ["heads.b.w"]}


def update(cid, trunk, a=None, b=None, n=10, na=None, nb=None):
    delta = {"trunk.w": torch.tensor(trunk)}
    tasks = {}
    if a is not None:
        delta["heads.a.w"] = torch.tensor(a)
        tasks["a"] = na if na is not None else n
    if b is not None:
        delta["heads.b.w"] = torch.tensor(b)
        tasks["b"] = nb if nb is not None else n
    return ClientUpdate(cid, delta, n, tasks)


def test_trunk_over_all_heads_over_holders():
    ups = [
        update(0, [1.0, 0.0], a=[2.0], n=10),
        update(1, [3.0, 6.0], a=[4.0], b=[8.0], n=30),
        update(2, [0.0, 2.0], b=[1.0], n=20),
    ]
    agg = aggregate_by_group(ups, GROUPS)
    # trunk: (10*[1,0] + 30*[3,6] + 20*[0,2]) / 60 = [100/60, 220/60]
    assert torch.allclose(agg["trunk.w"], torch.tensor([100 / 60, 220 / 60]))
    # head a: clients 0 and 1 only: (10*2 + 30*4) / 40 = 3.5
    assert torch.allclose(agg["heads.a.w"], torch.tensor([3.5]))
    # head b: clients 1 and 2 only: (30*8 + 20*1) / 50 = 5.2
    assert torch.allclose(agg["heads.b.w"], torch.tensor([5.2]))


def test_head_weights_use_labelled_rows_per_task():
    ups = [update(0, [0.0], a=[1.0], n=10, na=1), update(1, [0.0], a=[4.0], n=10, na=3)]
    agg = aggregate_by_group(ups, {"shared": ["trunk.w"], "task:a": ["heads.a.w"]})
    assert torch.allclose(agg["heads.a.w"], torch.tensor([(1 * 1 + 3 * 4) / 4]))


def test_head_nobody_holds_stays_unchanged():
    ups = [update(0, [1.0], a=[2.0]), update(1, [3.0], a=[4.0])]
    agg = aggregate_by_group(ups, GROUPS)
    assert "heads.b.w" not in agg
    params = {"trunk.w": torch.tensor([0.0]), "heads.a.w": torch.tensor([0.0]), "heads.b.w": torch.tensor([7.0])}
    new, _ = FedAvg(1.0).step(params, agg, {})
    assert torch.equal(new["heads.b.w"], torch.tensor([7.0]))
    assert torch.allclose(new["trunk.w"], torch.tensor([2.0]))
    assert torch.equal(params["trunk.w"], torch.tensor([0.0]))  # inputs are not mutated


def test_partial_group_is_rejected():
    bad = ClientUpdate(0, {"trunk.w": torch.zeros(1), "trunk.v": torch.zeros(1)}, 1, {})
    only_half = ClientUpdate(1, {"trunk.w": torch.zeros(1)}, 1, {})
    import pytest

    with pytest.raises(ValueError, match="only part of parameter group"):
        aggregate_by_group([bad, only_half], {"shared": ["trunk.w", "trunk.v"]})


def test_weighted_mean_hand_computed():
    out = weighted_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 3.0]))
    assert torch.allclose(out, torch.tensor([2.5, 3.5]))
