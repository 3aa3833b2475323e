"""Client-level DP-FedAvg: the client and server steps the federated loop calls, state explicit.

McMahan, Ramage, Talwar & Zhang, ICLR 2018, "Learning Differentially Private Recurrent Language
Models": clip each client's update to C, sum, add ``N(0, (sigma C)^2)``, account a sub-sampled
Gaussian mechanism per round. Optional adaptive clipping (Andrew et al., 2021). With
``placement="distributed"`` (under secure aggregation) each client adds ``N(0, (sigma C)^2 / m)``
so that the sum over ``m`` contributors carries the full noise; if fewer than ``m`` contribute,
the server tops the noise up (Kairouz, Liu & Steinke, ICML 2021 discuss the discrete version).

Per-group use (multi-task): the *whole* client update (trunk and heads) is clipped once; each group's
sum then gets noise of std ``sigma C`` per coordinate. The concatenation of all group sums has L2
sensitivity C, so one round is one Gaussian mechanism however many groups there are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fedmtl.config.privacy import AdaptiveClippingConfig, DPConfig
from fedmtl.privacy.dp.accountant import PrivacyAccountant, noise_for_target_epsilon
from fedmtl.privacy.dp.adaptive_clip import adaptive_clip_step, count_noise_std, update_noise_multiplier
from fedmtl.privacy.dp.clipping import clip_update
from fedmtl.privacy.dp.noise import add_noise


@dataclass(frozen=True)
class DPFedAvgState:
    """What changes between rounds: the clip norm, the accountant, the rounds done."""

    clip_norm: float
    accountant: PrivacyAccountant
    rounds: int = 0


@dataclass(frozen=True)
class ClientDPOutput:
    """A client's privatised update, its norm before clipping, and its adaptive-clipping bit."""

    delta: dict[str, Tensor]
    norm: float
    unclipped: float  # 1.0 if norm <= clip_norm else 0.0


@dataclass(frozen=True)
class RoundPrivacy:
    """The guarantee after a round, for logging."""

    round: int
    epsilon: float
    delta: float
    clip_norm: float
    noise_multiplier: float
    unclipped_fraction: float | None


@dataclass(frozen=True)
class DPFedAvg:
    """A resolved DP-FedAvg plan (noise multipliers fixed before training).

    Build with :meth:`from_config`. ``noise_multiplier`` (z) is the round's total; with adaptive
    clipping the update itself gets ``update_noise_multiplier`` (z_Delta) and the count the rest.
    """

    noise_multiplier: float
    update_noise_multiplier: float
    sample_rate: float
    cohort_size: int
    delta: float
    initial_clip_norm: float
    placement: str = "server"
    accountant: str = "rdp"
    target_epsilon: float | None = None
    stop_at_target: bool = True
    adaptive: AdaptiveClippingConfig | None = None

    @classmethod
    def from_config(cls, cfg: DPConfig, *, num_clients: int, cohort_size: int, rounds: int) -> DPFedAvg:
        """Resolve sigma (from ``target_epsilon`` over ``rounds`` if given) and the adaptive split.

        Args:
            cfg: the DP section of the privacy config.
            num_clients: population size N.
            cohort_size: clients per round m; the sample rate is m / N.
            rounds: planned rounds (used for ``target_epsilon``).
        """
        if not 1 <= cohort_size <= num_clients:
            raise ValueError(f"cohort_size={cohort_size} must be in 1..num_clients={num_clients}")
        q = cohort_size / num_clients
        z = cfg.noise_multiplier
        if z is None:
            assert cfg.target_epsilon is not None
            z = noise_for_target_epsilon(cfg.target_epsilon, cfg.delta, q, rounds, cfg.accountant)
        z_update = z
        if cfg.adaptive_clipping is not None:
            z_update = update_noise_multiplier(z, count_noise_std(cfg.adaptive_clipping, cohort_size))
        return cls(
            noise_multiplier=z,
            update_noise_multiplier=z_update,
            sample_rate=q,
            cohort_size=cohort_size,
            delta=cfg.delta,
            initial_clip_norm=cfg.clip_norm,
            placement=cfg.placement,
            accountant=cfg.accountant,
            target_epsilon=cfg.target_epsilon,
            stop_at_target=cfg.stop_at_target,
            adaptive=cfg.adaptive_clipping,
        )

    def init(self) -> DPFedAvgState:
        """State before the first round."""
        return DPFedAvgState(self.initial_clip_norm, PrivacyAccountant(self.accountant))  # type: ignore[arg-type]

    # client side --------------------------------------------------------------------------
    def client_noise_std(self, state: DPFedAvgState, noise_shares: int) -> float:
        """Std each client adds when noise is distributed over ``noise_shares`` contributors (else 0)."""
        if self.placement != "distributed":
            return 0.0
        if noise_shares < 1:
            raise ValueError(f"noise_shares must be >= 1, got {noise_shares}")
        return self.update_noise_multiplier * state.clip_norm / math.sqrt(noise_shares)

    def privatize_client(self, delta: Mapping[str, Tensor], state: DPFedAvgState) -> ClientDPOutput:
        """Clip the client's whole update (every group it holds) to the current clip norm C.

        Args:
            delta: all parameters the client sends.
            state: current DP state (its clip norm).
        """
        clipped, norm = clip_update(delta, state.clip_norm)
        return ClientDPOutput(clipped, norm, 1.0 if norm <= state.clip_norm else 0.0)

    def client_noise(
        self,
        groups: Mapping[str, Tensor],
        state: DPFedAvgState,
        noise_shares: Mapping[str, int],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Distributed placement: add this client's share of each group's noise to its clipped vectors.

        Args:
            groups: group -> the client's clipped (flattened) update of that group.
            state: current DP state.
            noise_shares: group -> m_g, the number of contributors its noise is split over; the full
                ``sigma C`` is reached when at least ``m_g`` holders contribute (else the server tops up).
            generator: the client's generator.

        Returns:
            ``groups`` plus noise (unchanged under server placement).
        """
        return {
            g: add_noise(v, self.client_noise_std(state, noise_shares[g]), generator)
            for g, v in sorted(groups.items())
        }

    # server side --------------------------------------------------------------------------
    def noise_sums(
        self,
        sums: Mapping[str, Tensor],
        state: DPFedAvgState,
        *,
        generator: torch.Generator | None = None,
        contributors: Mapping[str, int] | None = None,
        noise_shares: Mapping[str, int] | None = None,
    ) -> dict[str, Tensor]:
        """Noise each group's sum of clipped updates.

        Server placement: add ``N(0, (z_Delta C)^2)`` per coordinate. Distributed: add only the top-up
        ``z_Delta C sqrt(1 - k/m)`` for groups where ``k = contributors[g]`` fell short of
        ``m = noise_shares[g]``.
        """
        std = self.update_noise_multiplier * state.clip_norm
        out = {}
        for g, s in sorted(sums.items()):
            if self.placement == "distributed":
                if contributors is None or noise_shares is None:
                    raise ValueError("distributed noise needs contributors and noise_shares per group")
                k, m = contributors[g], noise_shares[g]
                out[g] = add_noise(s, std * math.sqrt(max(0.0, 1.0 - k / m)), generator)
            else:
                out[g] = add_noise(s, std, generator)
        return out

    def server_step(
        self,
        state: DPFedAvgState,
        *,
        unclipped_count: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[DPFedAvgState, RoundPrivacy]:
        """Close a round: account it and (if adaptive) move the clip norm.

        Args:
            state: the state the round ran with.
            unclipped_count: ``sum_i b_i`` over the cohort (secure-summable as an extra coordinate).
            generator: randomness for the count noise.
        """
        accountant = state.accountant.step(self.noise_multiplier, self.sample_rate)
        clip, fraction = state.clip_norm, None
        if self.adaptive is not None:
            clip, fraction = adaptive_clip_step(
                state.clip_norm, unclipped_count, self.cohort_size, self.adaptive, generator
            )
        new = replace(state, clip_norm=clip, accountant=accountant, rounds=state.rounds + 1)
        report = RoundPrivacy(
            new.rounds,
            accountant.epsilon(self.delta),
            self.delta,
            state.clip_norm,
            self.noise_multiplier,
            fraction,
        )
        return new, report

    def epsilon(self, state: DPFedAvgState) -> float:
        """Epsilon spent at ``delta`` so far."""
        return state.accountant.epsilon(self.delta)

    def can_run_round(self, state: DPFedAvgState) -> bool:
        """False when one more round would push epsilon past ``target_epsilon`` (the loop should stop)."""
        if self.target_epsilon is None or not self.stop_at_target:
            return True
        nxt = state.accountant.step(self.noise_multiplier, self.sample_rate)
        return nxt.epsilon(self.delta) <= self.target_epsilon
