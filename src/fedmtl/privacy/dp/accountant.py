"""Privacy accounting through Opacus' accountants, with the history as explicit, immutable state.

Client-level DP-FedAvg is a composition of sub-sampled Gaussian mechanisms, one per round, with
noise multiplier sigma and sample rate q = cohort size / number of clients (McMahan et al., 2018).
The analysis is Opacus': RDP (Mironov, 2017; Mironov, Talwar & Zhang, 2019) or PRV (Gopi, Lee &
Wutschitz, NeurIPS 2021). Both assume Poisson sampling of the cohort.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedmtl._extras import require

Mechanism = Literal["rdp", "prv"]


@dataclass(frozen=True)
class PrivacyAccountant:
    """Immutable accounting state: ``history`` of ``(noise_multiplier, sample_rate, steps)``.

    ``step`` returns a new accountant; ``epsilon`` asks Opacus for the current epsilon at ``delta``.
    """

    mechanism: Mechanism = "rdp"
    history: tuple[tuple[float, float, int], ...] = ()

    def __post_init__(self) -> None:
        if self.mechanism not in ("rdp", "prv"):
            raise ValueError(f"accountant must be 'rdp' or 'prv', got {self.mechanism!r}")

    def history_tensor(self) -> torch.Tensor:
        """``history`` as a ``[k, 3]`` float64 tensor: how checkpoints and client states keep it."""
        return torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3)

    @classmethod
    def from_history_tensor(cls, mechanism: Mechanism, history: torch.Tensor) -> PrivacyAccountant:
        """The accountant whose :meth:`history_tensor` is ``history``."""
        return cls(mechanism, tuple((float(s), float(q), int(n)) for s, q, n in history.tolist()))

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> PrivacyAccountant:
        """Record ``steps`` rounds of the sub-sampled Gaussian mechanism."""
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        hist = list(self.history)
        if hist and hist[-1][0] == noise_multiplier and hist[-1][1] == sample_rate:
            hist[-1] = (noise_multiplier, sample_rate, hist[-1][2] + steps)
        else:
            hist.append((float(noise_multiplier), float(sample_rate), steps))
        return PrivacyAccountant(self.mechanism, tuple(hist))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step, inf with zero noise)."""
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if not self.history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in self.history):
            return math.inf
        if self.mechanism == "rdp":  # Opacus' RDPAccountant.get_privacy_spent, with each (sigma, q)'s curve cached
            analysis = require("opacus.accountants.analysis.rdp", "privacy", "DP accounting")
            rdp = sum(steps * np.asarray(_rdp_of_one_step(q, sigma)) for sigma, q, steps in self.history)
            eps, _ = analysis.get_privacy_spent(orders=_rdp_orders(), rdp=rdp, delta=delta)
            return float(eps)
        acc = require("opacus.accountants", "privacy", "DP accounting").create_accountant(mechanism=self.mechanism)
        acc.history = list(self.history)
        return float(acc.get_epsilon(delta=delta))


def _rdp_orders() -> list[float]:
    """The RDP orders Opacus' RDPAccountant searches (its ``DEFAULT_ALPHAS``, read rather than copied)."""
    return list(require("opacus.accountants", "privacy", "DP accounting").RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    """The RDP curve of one step of the sub-sampled Gaussian mechanism (it composes linearly in steps).

    Computing it takes Opacus ~0.1-1 s (a series per fractional order); every client of a run with the same
    lot size shares it, so DP-SGD's per-client epsilon costs one computation per distinct ``(q, sigma)``.
    """
    analysis = require("opacus.accountants.analysis.rdp", "privacy", "DP accounting")
    return tuple(float(v) for v in analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=_rdp_orders()))


@functools.lru_cache(maxsize=1024)  # a binary search over the accountant: every client with the same q shares it
def noise_for_target_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: Mechanism = "rdp"
) -> float:
    """The noise multiplier sigma reaching ``target_epsilon`` at ``delta`` after ``rounds`` rounds.

    A thin call to Opacus' ``get_noise_multiplier`` (binary search on the accountant).
    """
    if target_epsilon <= 0 or rounds < 1:
        raise ValueError(f"need target_epsilon > 0 and rounds >= 1, got {target_epsilon}, {rounds}")
    return float(
        require("opacus.accountants.utils", "privacy", "DP accounting").get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=rounds,
            accountant=accountant,
        )
    )


def epsilon_schedule(
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: Mechanism = "rdp",
    every: int = 1,
) -> list[tuple[int, float]]:
    """``(round, epsilon)`` after every ``every``-th round up to ``rounds`` (and the last).

    What a privacy-utility curve is drawn against: pair each evaluated round's metric with its epsilon.
    """
    if rounds < 1 or every < 1:
        raise ValueError(f"rounds and every must be >= 1, got {rounds}, {every}")
    marks = sorted(set(range(every, rounds + 1, every)) | {rounds})
    acc = PrivacyAccountant(accountant)
    out, done = [], 0
    for r in marks:
        acc = acc.step(noise_multiplier, sample_rate, r - done)
        done = r
        out.append((r, acc.epsilon(delta)))
    return out
