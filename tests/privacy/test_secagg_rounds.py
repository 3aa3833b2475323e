"""A secure aggregation that cannot complete reveals nothing, is recorded with its reason, and the run goes
on; the protocol's dropouts are reported in ``dropped`` (issue 17)."""

from __future__ import annotations

import json

import torch
from personal.conftest import config, federation

from fedmtl.fl.federation import non_finite


def _secagg(threshold: float, dropout_rate: float) -> dict:
    return {"secure_aggregation": {"threshold": threshold, "dropout_rate": dropout_rate, "clip_range": 4.0}}


def test_too_few_survivors_abandons_the_round_and_the_next_one_runs():
    fed = federation(config(privacy=_secagg(1.0, 0.5), server={"rounds": 4, "clients_per_round": 6}))
    state = fed.init_state()
    outcomes = []
    for _ in range(4):
        before = state.params
        state, report = fed.round(state)
        if report.skipped:
            assert "secure aggregation abandoned, nothing revealed" in report.skipped and "threshold" in report.skipped
            assert report.dropped and all("secure aggregation" in why for why in report.dropped.values())
            assert all(torch.equal(state.params[n], before[n]) for n in before)
        outcomes.append(bool(report.skipped))
        assert not non_finite(state.params)
    assert state.round == 4 and any(outcomes)


def test_protocol_dropouts_of_a_completed_round_appear_in_dropped():
    fed = federation(config(privacy=_secagg(2, 0.3), server={"rounds": 3, "clients_per_round": 6}))
    state = fed.init_state()
    seen = {}
    for _ in range(3):
        state, report = fed.round(state)
        assert not report.skipped
        seen.update(report.dropped)
    assert seen and all("dropped out of secure aggregation" in why for why in seen.values())


def test_an_abandoned_round_is_recorded_in_metrics_and_checkpointed_past(tmp_path):
    """The abandoned round counts as done (its checkpoint holds the next round), so a resumed run goes on
    with new rounds' draws instead of replaying the same seeded dropouts."""
    from personal.conftest import synthetic

    import fedmtl
    from fedmtl.runloop.checkpoint import load_latest

    cfg = config(privacy=_secagg(1.0, 0.5), server={"rounds": 4, "clients_per_round": 6})
    cfg["output"] = {"dir": str(tmp_path), "name": "secagg", "plots": False, "checkpoint_every": 1}
    res = fedmtl.Experiment(cfg, source=synthetic()).run(progress=False)
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert res.summary["rounds_completed"] == 4 and [r["round"] for r in records] == [1, 2, 3, 4]
    skipped = [r for r in records if "secure aggregation abandoned" in r.get("skipped", "")]
    assert skipped and all(r["dropped"] for r in skipped)
    assert load_latest(res.run_dir)[0].round == 4
