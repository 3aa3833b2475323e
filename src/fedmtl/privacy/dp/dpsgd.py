"""Sample-level DP-SGD (Abadi et al., CCS 2016, "Deep Learning with Differential Privacy") on stacked tensors.

Each step of a client: every example's gradient (computed by the caller with ``torch.func``), clipped to
``max_grad_norm`` over every parameter the client trains, summed over the rows that Poisson sampling drew,
plus Gaussian noise ``N(0, sigma^2 C^2)`` per coordinate, divided by the expected batch size ``n q``
(Opacus' convention for a mean loss). A step whose Poisson batch is empty still adds its noise: skipping it
would tell which steps drew nobody.

The functions here take tensors with a leading client dimension ``[C, ...]``: the sequential trainer calls
them with one client, the vectorised engine with a chunk, so both engines compute the same numbers from the
same draws. Every draw (the Poisson masks, then per step the noise) comes from the client's own generator.
The accounting is Opacus' (:class:`~fedmtl.privacy.dp.accountant.PrivacyAccountant`): each client's history
of ``(sigma, q, steps)`` composes over every round it takes part in. This protects each *example* of a
client's data; client-level DP (:mod:`fedmtl.privacy.dp.dpfedavg`) protects a client's whole dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmtl.config.privacy import DPSGDConfig
from fedmtl.privacy.dp.accountant import PrivacyAccountant, noise_for_target_epsilon


@dataclass(frozen=True)
class DPSGDSchedule:
    """One client's DP-SGD parameters for a round of local training.

    Attributes:
        sample_rate: ``q``, each row's chance of entering a step's batch: ``1 / steps_per_epoch``, as Opacus'
            ``DPDataLoader`` sets it.
        steps_per_epoch: ``ceil(rows / batch_size)``.
        epochs: local epochs.
        noise_multiplier: ``sigma`` (resolved from ``target_epsilon`` over this round's steps when given).
        expected_batch_size: ``rows * q``, what the noisy sum is divided by.
    """

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    noise_multiplier: float
    expected_batch_size: float

    @classmethod
    def of(cls, cfg: DPSGDConfig, rows: int, batch_size: int, epochs: int) -> DPSGDSchedule:
        if rows < 1:
            raise ValueError(f"DP-SGD needs at least one training row, got {rows}")
        steps = max(1, math.ceil(rows / batch_size))
        q = 1.0 / steps
        if cfg.noise_multiplier is not None:
            sigma = float(cfg.noise_multiplier)
        else:
            assert cfg.target_epsilon is not None  # the config allows exactly one of the two
            sigma = noise_for_target_epsilon(cfg.target_epsilon, cfg.delta, q, steps * epochs, cfg.accountant)
        return cls(q, steps, epochs, sigma, rows * q)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def account(self, prior: PrivacyAccountant) -> PrivacyAccountant:
        """``prior`` after this round's steps."""
        return prior.step(self.noise_multiplier, self.sample_rate, self.steps)


def dp_batches(rows: int, batch_size: int, schedule: DPSGDSchedule, poisson: bool, generator: torch.Generator) -> list[tuple[int, Tensor]]:
    """Every step's rows and epoch, drawn before training from the client's generator.

    With ``poisson`` each row enters each step independently with probability ``q`` (the sampling the
    accountant's analysis assumes; batches vary in size and may be empty); otherwise shuffled batches of
    ``batch_size`` per epoch (then the accounting is the usual approximation).
    """
    out: list[tuple[int, Tensor]] = []
    for epoch in range(schedule.epochs):
        if poisson:
            for _ in range(schedule.steps_per_epoch):
                out.append((epoch, (torch.rand(rows, generator=generator) < schedule.sample_rate).nonzero().flatten()))
        else:
            perm = torch.randperm(rows, generator=generator)
            out += [(epoch, perm[lo : lo + batch_size]) for lo in range(0, rows, batch_size)]
    return out


def clip_and_noise(
    per_row: Mapping[str, Tensor],
    drawn: Tensor,
    trained: Mapping[str, Tensor],
    max_grad_norm: float,
    noise_multipliers: Tensor,
    expected_batch_sizes: Tensor,
    generators: Sequence[torch.Generator | None],
) -> dict[str, Tensor]:
    """Each client's private gradient from its examples' gradients.

    Args:
        per_row: per parameter, every example's gradient ``[C, B, ...]``.
        drawn: ``[C, B]``, 1 for a row in the step's batch (0: padding).
        trained: per parameter ``[C]``, 1 where the client trains it: only those enter the norm and get noise.
        max_grad_norm: ``C``, the per-example clip norm.
        noise_multipliers, expected_batch_sizes: per client ``[C]``.
        generators: per client the generator the noise is drawn from, in parameter order (``None``: no noise,
            for a client that takes no step now).

    Returns:
        Per parameter ``[C, ...]``: ``(sum_b clip(g_b) + N(0, sigma^2 C^2)) / (n q)``, zero where not trained.
    """
    names = list(per_row)
    masks = {n: trained[n].to(per_row[n].dtype) for n in names}
    sq = drawn.new_zeros(drawn.shape, dtype=torch.float32)
    for n in names:  # each example's squared norm over the parameters the client trains
        # vector_norm reads the [C, B, ...] gradients once; masking and squaring them first wrote two more
        # copies of them (about 30x slower on CPU, where per-example gradients are memory-bound)
        norms = torch.linalg.vector_norm(per_row[n].flatten(2), dim=2).to(sq.dtype)
        sq = sq + norms.pow(2) * masks[n].to(sq.dtype).unsqueeze(1)
    factor = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0) * drawn.to(sq.dtype)
    out = {n: torch.einsum("cb,cb...->c...", factor.to(per_row[n].dtype), per_row[n]) for n in names}
    scale = noise_multipliers.to(torch.float64) * max_grad_norm
    for c, gen in enumerate(generators):
        if gen is None or float(scale[c]) == 0.0:
            continue
        for n in names:
            if float(masks[n][c]) != 0.0:
                shape = out[n].shape[1:]
                noise = torch.randn(shape, generator=gen, dtype=out[n].dtype) * float(scale[c])
                out[n][c] += noise.to(out[n].device)
    denom = expected_batch_sizes.to(torch.float64)
    return {n: v / _bcast(denom.to(v.dtype).to(v.device), v) * _bcast(masks[n], v) for n, v in out.items()}


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


__all__ = ["DPSGDSchedule", "clip_and_noise", "dp_batches"]
