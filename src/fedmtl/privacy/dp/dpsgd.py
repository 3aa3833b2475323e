"""Sample-level DP-SGD on a client through Opacus (Abadi et al., CCS 2016, "Deep Learning with DP").

A thin wrapper: the client's model, optimiser and data loader go through Opacus' ``PrivacyEngine``
(per-sample gradients, per-sample clipping to ``max_grad_norm``, Gaussian noise, Poisson sampling),
and the client's epsilon comes from Opacus' accountant. This protects each *example* of a client's
data; client-level DP (:mod:`fedmtl.privacy.dp.dpfedavg`) protects a client's whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedmtl._extras import require
from fedmtl.config.privacy import DPSGDConfig
from fedmtl.privacy.dp.accountant import PrivacyAccountant

if TYPE_CHECKING:
    from opacus import PrivacyEngine


@dataclass(frozen=True)
class DPSGDSession:
    """One client's private local training session.

    Attributes:
        module: the model wrapped for per-sample gradients (its parameters are the original ones).
        optimizer: Opacus' ``DPOptimizer``; use it like the original.
        data_loader: the (Poisson-sampled) loader to train on.
        engine: the Opacus ``PrivacyEngine`` whose accountant records every step.
        noise_multiplier: the sigma used (resolved from a target epsilon if one was given).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    engine: PrivacyEngine
    noise_multiplier: float

    def epsilon(self, delta: float) -> float:
        """This client's epsilon at ``delta`` over all steps so far (including a ``prior`` history)."""
        return float(self.engine.get_epsilon(delta))

    def accountant(self) -> PrivacyAccountant:
        """The accounting history, to carry into this client's next session."""
        return PrivacyAccountant(self.engine.accountant.mechanism(), tuple(self.engine.accountant.history))

    def close(self) -> nn.Module:
        """Remove Opacus' hooks and return the plain model."""
        return self.module.to_standard_module()  # type: ignore[operator]


def make_private_client(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    cfg: DPSGDConfig,
    *,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    prior: PrivacyAccountant | None = None,
) -> DPSGDSession:
    """Wrap a client's training objects for DP-SGD.

    Args:
        model: the client's model (must be Opacus-compatible: no BatchNorm).
        optimizer: an optimiser over ``model``'s parameters.
        data_loader: the client's training loader.
        cfg: clip norm, noise multiplier or target epsilon, delta, accountant.
        epochs: local epochs planned (used to resolve ``cfg.target_epsilon``).
        generator: randomness for noise and Poisson sampling (None: Opacus' default RNG).
        prior: this client's accounting history from earlier rounds, so epsilon keeps composing.
    """
    opacus = require("opacus", "privacy", "DP-SGD")
    engine = opacus.PrivacyEngine(accountant=cfg.accountant)
    if prior is not None:
        if prior.mechanism != cfg.accountant:
            raise ValueError(f"prior accountant is {prior.mechanism!r}, config asks for {cfg.accountant!r}")
        engine.accountant.history = list(prior.history)
    loader = (
        require("opacus.data_loader", "privacy", "DP-SGD").DPDataLoader.from_data_loader(data_loader, generator=generator)
        if cfg.poisson_sampling
        else data_loader
    )
    common = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=False,  # done above, with the passed generator
        noise_generator=generator,
    )
    if cfg.noise_multiplier is not None:
        module, optim, dl = engine.make_private(noise_multiplier=cfg.noise_multiplier, **common)
    else:
        module, optim, dl = engine.make_private_with_epsilon(
            target_epsilon=cfg.target_epsilon, target_delta=cfg.delta, epochs=epochs, **common
        )
    return DPSGDSession(module, optim, dl, engine, float(optim.noise_multiplier))
