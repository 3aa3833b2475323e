import warnings

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmtl.config.privacy import DPSGDConfig
from fedmtl.privacy.dp.dpsgd import make_private_client


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 2, (64,), generator=g)
    model = nn.Linear(5, 2)
    return (
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        DataLoader(TensorDataset(x, y), batch_size=16),
        g,
    )


def _train(session):
    for xb, yb in session.data_loader:
        session.optimizer.zero_grad()
        nn.functional.cross_entropy(session.module(xb), yb).backward()
        session.optimizer.step()


def test_dpsgd_epsilon_equals_opacus_accountant():
    model, opt, loader, g = _setup()
    before = model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = make_private_client(
            model, opt, loader, DPSGDConfig(noise_multiplier=1.0, max_grad_norm=0.5), generator=g
        )
        _train(s)
        ref = RDPAccountant()
        for _ in range(len(s.data_loader)):
            ref.step(noise_multiplier=1.0, sample_rate=16 / 64)
        assert s.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5))
        # a second session continues this client's accounting
        prior = s.accountant()
        plain = s.close()
        assert plain is model and not torch.equal(model.weight, before)
        opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
        s2 = make_private_client(
            model,
            opt2,
            loader,
            DPSGDConfig(noise_multiplier=1.0, max_grad_norm=0.5),
            generator=g,
            prior=prior,
        )
        _train(s2)
        assert s2.epsilon(1e-5) > s.epsilon(1e-5)
        s2.close()


def test_dpsgd_target_epsilon_resolves_sigma():
    model, opt, loader, g = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = make_private_client(model, opt, loader, DPSGDConfig(target_epsilon=3.0), epochs=2, generator=g)
        _train(s)
        _train(s)
        assert s.noise_multiplier > 0
        assert s.epsilon(1e-5) <= 3.0
        s.close()
