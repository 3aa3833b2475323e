"""Privacy inside whole runs: epsilon logged every round, budget stops training, resume keeps the accountant."""

from __future__ import annotations

import pytest

import fedmtl
from fedmtl.privacy.dp.accountant import PrivacyAccountant


def test_dp_run_logs_epsilon_matching_the_accountant(tiny_config):
    cfg = {**tiny_config, "privacy": {"dp": {"clip_norm": 1.0, "noise_multiplier": 0.8}}}
    res = fedmtl.Experiment(cfg).run(progress=False)
    eps = [r["privacy"]["epsilon"] for r in res.history]
    q = 5 / 10
    expected = [PrivacyAccountant("rdp").step(0.8, q, steps=k).epsilon(1e-5) for k in (1, 2, 3)]
    assert eps == pytest.approx(expected, rel=1e-6)


def test_target_epsilon_sets_sigma_before_training(tiny_config):
    cfg = {**tiny_config, "server": {"rounds": 4, "clients_per_round": 5}, "privacy": {"dp": {"clip_norm": 1.0, "target_epsilon": 3.0}}}
    res = fedmtl.Experiment(cfg).run(progress=False)
    assert res.summary["rounds_completed"] == 4
    final = res.history[-1]["privacy"]
    assert final["epsilon"] <= 3.0 and final["epsilon"] > 2.5  # sigma chosen so the budget is (nearly) used up
    sigma = final["noise_multiplier"]
    assert PrivacyAccountant("rdp").step(sigma, 0.5, steps=4).epsilon(1e-5) == pytest.approx(final["epsilon"])


def test_resume_keeps_the_privacy_accountant(tiny_config):
    cfg = {**tiny_config, "privacy": {"dp": {"clip_norm": 1.0, "noise_multiplier": 0.8}}}
    full = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "full"}}).run(progress=False)
    part = {**cfg, "server": {**cfg["server"], "rounds": 1}, "output": {**cfg["output"], "name": "part"}}
    first = fedmtl.Experiment(part).run(progress=False)
    resumed = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "part"}}).run(resume=first.run_dir, progress=False)
    assert [r["privacy"]["epsilon"] for r in resumed.history] == [r["privacy"]["epsilon"] for r in full.history]


def test_secure_aggregation_run_equals_plain_fedavg_closely(tiny_config):
    plain = fedmtl.Experiment({**tiny_config, "output": {**tiny_config["output"], "name": "plain"}}).run(progress=False)
    secure = fedmtl.Experiment({**tiny_config, "privacy": {"secure_aggregation": {"dropout_rate": 0.0}}, "output": {**tiny_config["output"], "name": "sa"}}).run(progress=False)
    for name, value in plain.params.items():
        assert (value - secure.params[name]).abs().max() < 1e-3, name  # quantisation error only
    assert secure.history[0]["privacy"]["secagg_upload_bytes_per_client"] > 0


def test_dp_sgd_clients_report_a_growing_epsilon(tiny_config):
    cfg = {**tiny_config, "privacy": {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}}
    res = fedmtl.Experiment(cfg).run(progress=False)
    eps = [r["privacy"]["dp_sgd_max_client_epsilon"] for r in res.history]
    assert all(e > 0 for e in eps) and eps[-1] >= eps[0]


def test_dp_sgd_refuses_gradient_balancers(tiny_config):
    cfg = {**tiny_config, "mtl": {"balancer": {"name": "pcgrad"}}, "privacy": {"dp_sgd": {"noise_multiplier": 1.0}}}
    with pytest.raises(ValueError, match="needs per-task gradients"):
        fedmtl.Experiment(cfg).run(progress=False)
