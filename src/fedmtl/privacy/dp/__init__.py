"""Differential privacy: clipping, noise, accounting (Opacus), DP-FedAvg, adaptive clipping, DP-SGD."""

from fedmtl.privacy.dp.accountant import PrivacyAccountant, epsilon_schedule, noise_for_target_epsilon
from fedmtl.privacy.dp.adaptive_clip import adaptive_clip_step, count_noise_std, update_noise_multiplier
from fedmtl.privacy.dp.clipping import clip_update, global_norm
from fedmtl.privacy.dp.dpfedavg import ClientDPOutput, DPFedAvg, DPFedAvgState, RoundPrivacy
from fedmtl.privacy.dp.noise import add_noise, gaussian_like

__all__ = [
    "ClientDPOutput",
    "DPFedAvg",
    "DPFedAvgState",
    "PrivacyAccountant",
    "RoundPrivacy",
    "adaptive_clip_step",
    "add_noise",
    "clip_update",
    "count_noise_std",
    "epsilon_schedule",
    "gaussian_like",
    "global_norm",
    "noise_for_target_epsilon",
    "update_noise_multiplier",
]
