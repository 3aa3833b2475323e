"""Quantile-based adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021).

"Differentially Private Learning with Adaptive Clipping", Algorithm 1: each client reports the bit
``b_i = [||Delta_i|| <= C]``; the server noises their sum with std ``sigma_b`` and moves the clip norm
geometrically towards the ``gamma`` quantile of update norms: ``C <- C exp(-eta (b_bar - gamma))``.
Spending part of the budget on the count leaves the update a noise multiplier
``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (their Theorem 1) so that the round as a whole is a
Gaussian mechanism with multiplier ``z``.
"""

from __future__ import annotations

import math

import torch

from fedmtl.config.privacy import AdaptiveClippingConfig


def count_noise_std(cfg: AdaptiveClippingConfig, cohort_size: int) -> float:
    """sigma_b: the configured value, else the paper's default of cohort size / 20."""
    return cfg.count_noise_multiplier if cfg.count_noise_multiplier is not None else cohort_size / 20.0


def update_noise_multiplier(noise_multiplier: float, sigma_b: float) -> float:
    """z_Delta such that the pair (update noise, count noise) composes to multiplier ``noise_multiplier``."""
    if noise_multiplier == 0:
        return 0.0
    if sigma_b <= 0 or 2 * sigma_b <= noise_multiplier:
        raise ValueError(
            f"adaptive clipping needs 2 * sigma_b > z: sigma_b={sigma_b}, z={noise_multiplier}; "
            "raise count_noise_multiplier or the cohort size"
        )
    return (noise_multiplier**-2 - (2 * sigma_b) ** -2) ** -0.5


def adaptive_clip_step(
    clip_norm: float,
    unclipped_count: float,
    cohort_size: int,
    cfg: AdaptiveClippingConfig,
    generator: torch.Generator | None,
) -> tuple[float, float]:
    """One geometric update of the clip norm.

    Args:
        clip_norm: C used this round.
        unclipped_count: ``sum_i b_i`` over the cohort (clients with norm <= C).
        cohort_size: m, the (expected) number of clients in the round.
        cfg: target quantile, learning rate, sigma_b.
        generator: randomness for the count noise.

    Returns:
        The next clip norm and the noised fraction ``b_bar`` it was computed from.
    """
    if cohort_size < 1:
        raise ValueError(f"cohort_size must be >= 1, got {cohort_size}")
    sigma_b = count_noise_std(cfg, cohort_size)
    noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * sigma_b if sigma_b > 0 else 0.0
    fraction = (unclipped_count + noise) / cohort_size
    new = clip_norm * math.exp(-cfg.learning_rate * (fraction - cfg.target_quantile))
    return min(max(new, cfg.min_clip_norm), cfg.max_clip_norm), fraction
