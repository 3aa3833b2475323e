"""Privacy and security: secure aggregation and differential privacy, on tensors and dicts of tensors.

* :func:`private_aggregate` -- one round's per-group aggregation under a :class:`PrivacyConfig`
  (clipping, noise, secure aggregation, accounting composed).
* :mod:`fedmtl.privacy.secagg` -- the Bonawitz et al. (2017) protocol / SecAgg+ (Bell et al., 2020).
* :mod:`fedmtl.privacy.dp` -- DP-FedAvg, adaptive clipping, Opacus accounting, DP-SGD.
"""

from fedmtl.config.privacy import (
    AdaptiveClippingConfig,
    DPConfig,
    DPSGDConfig,
    PrivacyConfig,
    SecureAggregationConfig,
)
from fedmtl.privacy.dp import (
    DPFedAvg,
    DPFedAvgState,
    PrivacyAccountant,
    RoundPrivacy,
    add_noise,
    clip_update,
    epsilon_schedule,
    noise_for_target_epsilon,
)
from fedmtl.privacy.round import PrivateRoundResult, merge_groups, private_aggregate, split_groups
from fedmtl.privacy.secagg import SecAggError, SecAggResult, secure_aggregate

__all__ = [
    "AdaptiveClippingConfig",
    "DPConfig",
    "DPFedAvg",
    "DPFedAvgState",
    "DPSGDConfig",
    "PrivacyAccountant",
    "PrivacyConfig",
    "PrivateRoundResult",
    "RoundPrivacy",
    "SecAggError",
    "SecAggResult",
    "SecureAggregationConfig",
    "add_noise",
    "clip_update",
    "epsilon_schedule",
    "merge_groups",
    "noise_for_target_epsilon",
    "private_aggregate",
    "secure_aggregate",
    "split_groups",
]
