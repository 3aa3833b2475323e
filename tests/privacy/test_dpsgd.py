"""Sample-level DP-SGD against a hand-written reference loop (Abadi et al., 2016, Algorithm 1) and Opacus' accountant."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedmtl.config.mtl import MTLConfig
from fedmtl.config.privacy import DPSGDConfig
from fedmtl.config.training import ClientConfig
from fedmtl.data.dataset import ClientData, Split
from fedmtl.fl.client import LocalTrainer
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.dp_sgd_client import example_gradients
from fedmtl.mtl.factory import as_model
from fedmtl.privacy.dp.accountant import PrivacyAccountant
from fedmtl.privacy.dp.dpsgd import DPSGDSchedule, clip_and_noise, dp_batches
from fedmtl.tasks import MISSING_CLASS, Task

TASKS = [Task("digit", "multiclass", 3), Task("big", "binary")]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.heads = nn.ModuleDict({"digit": nn.Linear(5, 3), "big": nn.Linear(5, 1)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def _model():
    torch.manual_seed(0)
    return as_model(Net(), (4,), TASKS)


def _client(n: int = 13) -> ClientData:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    digit = torch.randint(0, 3, (n,), generator=g)
    digit[2] = MISSING_CLASS  # a row without this task's label
    big = (x[:, 0] > 0).float()
    big[5] = float("nan")
    split = Split(x, {"digit": digit, "big": big})
    return ClientData(0, ("digit", "big"), split, split)


def test_example_gradients_equal_one_backward_per_row():
    model, data = _model(), _client()
    params = {n: p.detach() for n, p in model.named_parameters()}
    w = torch.tensor([0.7, 1.3])
    got = example_gradients(model, params, {}, data.train.x, data.train.y, TASKS, w)
    for i in range(len(data.train)):
        model.zero_grad()
        preds = model(data.train.x[i : i + 1], ["digit", "big"])
        loss = sum(wt * t.loss(preds[t.name], data.train.y[t.name][i : i + 1], reduction="sum") for wt, t in zip(w, TASKS))
        loss.backward()
        for n, p in model.named_parameters():
            assert torch.allclose(got[n][i], p.grad, atol=1e-6), (i, n)


def test_clip_and_noise_by_hand():
    # two clients, two examples each, one parameter of two coordinates
    g = {"w": torch.tensor([[[3.0, 4.0], [0.3, 0.4]], [[0.0, 2.0], [6.0, 8.0]]])}
    drawn = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # client 1's second row is padding
    out = clip_and_noise(g, drawn, {"w": torch.ones(2)}, 1.0, torch.zeros(2), torch.tensor([2.0, 4.0]), [None, None])
    # client 0: [3,4] clipped to [0.6, 0.8], [0.3, 0.4] kept; sum / 2. client 1: [0, 2] clipped to [0, 1]; / 4
    assert torch.allclose(out["w"], torch.tensor([[0.45, 0.6], [0.0, 0.25]]), atol=1e-6)
    # noise: sigma * C * N(0, 1) from each client's generator, in parameter order; a client without one gets none
    gen = torch.Generator().manual_seed(7)
    noisy = clip_and_noise(g, drawn, {"w": torch.ones(2)}, 0.5, torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]), [gen, None])
    z = torch.randn(2, generator=torch.Generator().manual_seed(7))
    clipped0 = torch.tensor([0.3, 0.4]) + torch.tensor([0.3, 0.4]) * (0.5 / (0.5 + 1e-6))
    assert torch.allclose(noisy["w"][0], clipped0 + 2.0 * 0.5 * z, atol=1e-5)
    assert torch.allclose(noisy["w"][1], torch.tensor([0.0, 0.5]), atol=1e-5)


def test_untrained_parameters_neither_enter_the_norm_nor_get_noise():
    g = {"a": torch.tensor([[[3.0]]]), "b": torch.tensor([[[4.0]]])}
    out = clip_and_noise(g, torch.ones(1, 1), {"a": torch.ones(1), "b": torch.zeros(1)}, 10.0, torch.tensor([1.0]), torch.ones(1), [torch.Generator().manual_seed(0)])
    z = torch.randn(1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["a"][0], torch.tensor([3.0]) + 10.0 * z)  # norm 3 (not 5): unclipped
    assert float(out["b"].abs().max()) == 0.0


def test_schedule_follows_opacus_conventions():
    s = DPSGDSchedule.of(DPSGDConfig(noise_multiplier=1.1), rows=50, batch_size=16, epochs=2)
    assert (s.steps_per_epoch, s.steps, s.sample_rate, s.noise_multiplier) == (4, 8, 0.25, 1.1)
    assert s.expected_batch_size == pytest.approx(12.5)
    batches = dp_batches(50, 16, s, True, torch.Generator().manual_seed(0))
    assert len(batches) == 8 and [e for e, _ in batches] == [0] * 4 + [1] * 4
    shuffled = dp_batches(50, 16, s, False, torch.Generator().manual_seed(0))
    assert [len(i) for _, i in shuffled] == [16, 16, 16, 2] * 2 and sorted(torch.cat([i for _, i in shuffled[:4]]).tolist()) == list(range(50))


def test_target_epsilon_resolves_the_noise_over_the_rounds_steps():
    s = DPSGDSchedule.of(DPSGDConfig(target_epsilon=3.0, delta=1e-5), rows=64, batch_size=16, epochs=2)
    eps = s.account(PrivacyAccountant("rdp")).epsilon(1e-5)
    assert s.noise_multiplier > 0 and eps <= 3.0 and eps > 2.9


def _reference_dp_sgd(model, data: ClientData, cfg: DPSGDConfig, lr: float, batch_size: int, epochs: int, seed: int):
    """Abadi et al.'s Algorithm 1 written out with one backward per example: Poisson lots, clip, noise, SGD."""
    gen = torch.Generator().manual_seed(seed)
    n = len(data.train)
    steps = math.ceil(n / batch_size)
    q = 1.0 / steps
    masks = [(torch.rand(n, generator=gen) < q).nonzero().flatten() for _ in range(steps * epochs)]
    params = list(model.parameters())
    for idx in masks:
        total = [torch.zeros_like(p) for p in params]
        for i in idx.tolist():
            model.zero_grad()
            preds = model(data.train.x[i : i + 1], ["digit", "big"])
            sum(t.loss(preds[t.name], data.train.y[t.name][i : i + 1], reduction="sum") for t in TASKS).backward()
            norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
            f = min(1.0, cfg.max_grad_norm / (float(norm) + 1e-6))
            total = [a + f * p.grad for a, p in zip(total, params)]
        with torch.no_grad():
            for a, p in zip(total, params):
                noise = torch.randn(p.shape, generator=gen) * cfg.noise_multiplier * cfg.max_grad_norm
                p -= lr * (a + noise) / (n * q)
    return {n_: p.detach().clone() for n_, p in model.named_parameters()}


def test_one_client_training_equals_the_reference_loop_and_opacus_accounting():
    cfg = DPSGDConfig(noise_multiplier=0.9, max_grad_norm=0.7)
    client_cfg = ClientConfig(epochs=2, batch_size=4, optimizer={"name": "sgd", "lr": 0.2})
    data = _client()
    trainer = LocalTrainer(_model(), client_cfg, MTLConfig(), cfg)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    res = trainer.train(start, data, ClientState(), torch.Generator().manual_seed(3))
    ref = _reference_dp_sgd(_model(), data, cfg, 0.2, 4, 2, 3)
    for n in ref:
        assert torch.allclose(res.params[n], ref[n], atol=1e-5), n
    opacus = RDPAccountant()
    for _ in range(2 * 4):
        opacus.step(noise_multiplier=0.9, sample_rate=1 / 4)
    assert res.metrics["dp_sgd_epsilon"] == pytest.approx(opacus.get_epsilon(1e-5))
    assert res.metrics["steps"] == 8
    # the next round composes on this client's history
    again = trainer.train(start, data, res.state, torch.Generator().manual_seed(4))
    for _ in range(8):
        opacus.step(noise_multiplier=0.9, sample_rate=1 / 4)
    assert again.metrics["dp_sgd_epsilon"] == pytest.approx(opacus.get_epsilon(1e-5))


def test_batch_norm_is_refused_with_a_reason():
    class BN(Net):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))

    torch.manual_seed(0)
    trainer = LocalTrainer(as_model(BN(), (4,), TASKS), ClientConfig(), MTLConfig(), DPSGDConfig(noise_multiplier=1.0))
    with pytest.raises(ValueError, match="BatchNorm.*LayerNorm or GroupNorm"):
        trainer.train({}, _client(), ClientState(), torch.Generator().manual_seed(0))
