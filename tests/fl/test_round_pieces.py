"""Seeding, batching and sampling: deterministic, independent of visiting order."""

from __future__ import annotations

import torch

from fedmtl.fl.batching import batch_plan
from fedmtl.fl.sampling import cohort_size, sample_cohort
from fedmtl.fl.seeding import derive_seed, generator


def test_batch_plan_covers_each_row_once_per_epoch():
    plan = batch_plan(10, 4, 3, generator(0, "client", 0, 1))
    assert len(plan) == 3
    for epoch in plan:
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))


def test_generators_depend_on_every_key():
    seeds = {derive_seed(0, "client", 1, 2), derive_seed(0, "client", 2, 1), derive_seed(1, "client", 1, 2), derive_seed(0, "codec", 1, 2)}
    assert len(seeds) == 4
    a = torch.rand(3, generator=generator(5, "cohort", 3))
    b = torch.rand(3, generator=generator(5, "cohort", 3))
    assert torch.equal(a, b)


def test_cohort_sampling():
    assert cohort_size(100, None, 0.1) == 10
    assert cohort_size(100, 7, None) == 7
    assert cohort_size(100, None, None) == 100
    c = sample_cohort(100, 10, generator(0, "cohort", 0))
    assert len(set(c)) == 10 and c == sorted(c) and all(0 <= x < 100 for x in c)
    assert c == sample_cohort(100, 10, generator(0, "cohort", 0))
