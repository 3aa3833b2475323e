"""Configuration of privacy and security: secure aggregation and differential privacy.

Three independent switches, all off by default:

* ``dp``: client-level DP-FedAvg (McMahan et al., ICLR 2018), clip each client's whole update to
  ``clip_norm`` and add Gaussian noise of std ``noise_multiplier * clip_norm`` to the sum, on the
  server or split across the clients when secure aggregation is on; optional adaptive clipping
  (Andrew et al., NeurIPS 2021); accounting with Opacus' RDP or PRV accountant.
* ``secure_aggregation``: the Bonawitz et al. (CCS 2017) masking protocol, optionally over a sparse
  neighbour graph (SecAgg+, Bell et al., CCS 2020).
* ``dp_sgd``: sample-level DP-SGD on each client (Abadi et al., CCS 2016): per-example gradients by
  ``torch.func``, accounting by Opacus.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveFloat, model_validator

from fedmtl.config.base import MAX_SIZE, Size, StrictModel


class AdaptiveClippingConfig(StrictModel):
    """Quantile-based adaptive clipping (Andrew et al., 2021, "DP Learning with Adaptive Clipping").

    The clip norm moves geometrically, ``C <- C * exp(-lr * (b - target_quantile))``, where ``b`` is
    the (noised) fraction of the cohort whose update norm was at most ``C``.
    """

    target_quantile: float = Field(
        default=0.5, gt=0, lt=1, description="Quantile gamma of update norms to track."
    )
    learning_rate: PositiveFloat = Field(default=0.2, description="Geometric step size eta_C.")
    count_noise_multiplier: float | None = Field(
        default=None,
        ge=0,
        description="Std of the noise on the clipped-count sum (sigma_b); None = cohort_size / 20 as in the paper.",
    )
    min_clip_norm: PositiveFloat = 1e-6
    max_clip_norm: PositiveFloat = 1e6


class DPConfig(StrictModel):
    """Client-level differential privacy for the federated average (DP-FedAvg)."""

    clip_norm: PositiveFloat = Field(default=1.0, description="L2 bound C on each client's whole update.")
    noise_multiplier: float | None = Field(default=None, ge=0, description="sigma; noise std is sigma * C.")
    target_epsilon: PositiveFloat | None = Field(
        default=None,
        description="Set sigma before training so that epsilon stays below this after all rounds.",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1)
    adaptive_clipping: AdaptiveClippingConfig | None = None
    placement: Literal["server", "distributed"] = Field(
        default="server",
        description="server: the server noises the sum; distributed: each client adds its share (needs secure aggregation).",
    )
    accountant: Literal["rdp", "prv"] = "rdp"
    stop_at_target: bool = Field(
        default=True, description="With target_epsilon: stop before a round that would exceed it."
    )

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "set exactly one of dp.noise_multiplier and dp.target_epsilon, got "
                f"noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon}"
            )
        return self


class SecureAggregationConfig(StrictModel):
    """Secure aggregation by pairwise masking (Bonawitz et al., 2017), optionally SecAgg+ (Bell et al., 2020)."""

    threshold: float = Field(
        default=0.5,
        gt=0,
        le=MAX_SIZE,
        description="Shamir threshold t: an int >= 2 is absolute; a value in (0, 1] is a fraction of each neighbourhood.",
    )
    bits: int = Field(default=32, ge=8, le=64, description="Ring size 2^bits of the masked integers.")
    clip_range: PositiveFloat = Field(
        default=1.0, description="Each coordinate is clipped to [-r, r] before quantising."
    )
    rounding: Literal["stochastic", "deterministic"] = "stochastic"
    graph: Literal["complete", "k_regular"] = Field(
        default="complete", description="complete: original SecAgg; k_regular: SecAgg+ random Harary graph."
    )
    degree: Size | None = Field(
        default=None, description="k for the k_regular graph (even); None = an even number near 3 log2(n)."
    )
    min_group_survivors: int = Field(
        default=2,
        ge=2,
        le=MAX_SIZE,
        description=(
            "Refuse to reveal a parameter group's sum over fewer surviving holders than this; at least 2 "
            "(the sum over one holder is that holder's own update)."
        ),
    )
    dropout_rate: float = Field(
        default=0.0, ge=0, lt=1, description="Simulated fraction dropping after sharing keys."
    )

    @model_validator(mode="after")
    def _threshold_form(self) -> SecureAggregationConfig:
        if self.threshold > 1 and (self.threshold != int(self.threshold) or self.threshold < 2):
            raise ValueError(
                f"secure_aggregation.threshold={self.threshold}: use an integer >= 2 or a fraction in (0, 1]"
            )
        if self.degree is not None and self.degree % 2:
            raise ValueError(f"secure_aggregation.degree={self.degree} must be even (a Harary graph)")
        return self

    def resolve_threshold(self, neighbourhood: int) -> int:
        """Absolute threshold for a neighbourhood of ``neighbourhood`` parties (itself included)."""
        if self.threshold <= 1:
            t = max(2, math.ceil(self.threshold * neighbourhood))
        else:
            t = int(self.threshold)
        if t > neighbourhood:
            raise ValueError(
                f"secure_aggregation.threshold resolves to t={t}, more than the {neighbourhood} parties "
                "in a neighbourhood"
            )
        return t


class DPSGDConfig(StrictModel):
    """Sample-level DP-SGD on each client (Abadi et al., 2016): Poisson lots, per-example clipping, Gaussian noise."""

    max_grad_norm: PositiveFloat = Field(default=1.0, description="Per-sample gradient clip norm.")
    noise_multiplier: float | None = Field(default=None, ge=0)
    target_epsilon: PositiveFloat | None = Field(
        default=None, description="Per client, over its local epochs."
    )
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv"] = "rdp"
    poisson_sampling: bool = True

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPSGDConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "set exactly one of dp_sgd.noise_multiplier and dp_sgd.target_epsilon, got "
                f"noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon}"
            )
        return self


class PrivacyConfig(StrictModel):
    """Privacy and security of a run; every part is off (None) by default."""

    dp: DPConfig | None = None
    secure_aggregation: SecureAggregationConfig | None = None
    dp_sgd: DPSGDConfig | None = None

    @model_validator(mode="after")
    def _distributed_needs_secagg(self) -> PrivacyConfig:
        if self.dp is not None and self.dp.placement == "distributed" and self.secure_aggregation is None:
            raise ValueError(
                "privacy.dp.placement='distributed' needs privacy.secure_aggregation: "
                "otherwise the server sees each client's under-noised update"
            )
        return self
