"""The server's aggregation under privacy: DP-FedAvg and/or secure aggregation, per parameter group.

Wraps :func:`fedmtl.privacy.round.private_aggregate` for the round loop and keeps its state (the
adaptive clip norm and the accountant's history) as a tensor tree, so checkpoints carry it and a
resumed run reports the same epsilon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedmtl.config.privacy import PrivacyConfig
from fedmtl.fl.update import ClientUpdate
from fedmtl.privacy.dp.accountant import PrivacyAccountant
from fedmtl.privacy.dp.dpfedavg import DPFedAvg, DPFedAvgState
from fedmtl.privacy.round import PrivateRoundResult, private_aggregate
from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class PrivateAggregate:
    """The aggregate, the next privacy state, and what to log about this round."""

    mean: dict[str, Tensor]
    state: TensorTree
    log: dict[str, Any]
    #: client id -> why its update is in no sum (secure aggregation's dropouts)
    dropped: dict[int, str] = field(default_factory=dict)


class PrivacyStep:
    """DP and secure aggregation for the round loop, configured once per run."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int, cohort_size: int, rounds: int, weight_cap: float):
        self.cfg = cfg
        self.dp = DPFedAvg.from_config(cfg.dp, num_clients=num_clients, cohort_size=cohort_size, rounds=rounds) if cfg.dp else None
        self.weight_cap = max(weight_cap, 1.0)

    @staticmethod
    def enabled(cfg: PrivacyConfig) -> bool:
        return cfg.dp is not None or cfg.secure_aggregation is not None

    def init(self) -> TensorTree:
        return self._encode(self.dp.init()) if self.dp is not None else {}

    def can_run_round(self, state: TensorTree) -> bool:
        """False once one more round would exceed the target epsilon."""
        return self.dp is None or self.dp.can_run_round(self._decode(state))

    def aggregate(
        self, updates: Sequence[ClientUpdate], groups: Mapping[str, Sequence[str]], state: TensorTree, generator: torch.Generator
    ) -> PrivateAggregate:
        deltas = {u.client_id: u.delta for u in updates}
        # without DP, FedAvg weights travel through secure aggregation scaled into [0, 1] by a public cap
        weights = None if self.dp is not None else {u.client_id: {g: u.weight_for(g) / self.weight_cap for g in groups} for u in updates}
        dp_state = self._decode(state) if self.dp is not None else None
        res = private_aggregate(
            deltas, groups, self.cfg, dp=self.dp, dp_state=dp_state, weights=weights, dropped=None, generator=generator
        )
        return self.report(res, state)

    def report(self, res: PrivateRoundResult, state: TensorTree) -> PrivateAggregate:
        """The round's aggregate, next state and log from :func:`private_aggregate`'s (or
        :func:`~fedmtl.privacy.round.finish_round`'s) result; ``state`` is the privacy state it started from."""
        log: dict[str, Any] = {}
        if res.privacy is not None:
            p = res.privacy
            log.update(epsilon=p.epsilon, delta=p.delta, clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier, unclipped_fraction=p.unclipped_fraction)
        if res.secagg is not None:
            s = res.secagg
            log.update(secagg_upload_bytes_per_client=s.upload_bytes, secagg_download_bytes_per_client=s.download_bytes, secagg_server_seconds=s.server_seconds)
        if res.withheld:
            log["withheld_groups"] = list(res.withheld)
        new_state = self._encode(res.dp_state) if res.dp_state is not None else state
        gone = {c: "dropped out of secure aggregation after sharing keys (simulated dropout_rate)" for c in res.dropped}
        return PrivateAggregate(res.mean, new_state, log, gone)

    def decode_state(self, tree: TensorTree) -> DPFedAvgState:
        """The DP state a privacy-state tree holds (the initial one for an empty tree); needs DP."""
        return self._decode(tree)

    @staticmethod
    def _encode(state: DPFedAvgState) -> TensorTree:
        history = state.accountant.history_tensor()
        return {"clip_norm": torch.tensor(state.clip_norm, dtype=torch.float64), "rounds": torch.tensor(state.rounds), "history": history}

    def _decode(self, tree: TensorTree) -> DPFedAvgState:
        assert self.dp is not None
        if not tree:
            return self.dp.init()
        accountant = PrivacyAccountant.from_history_tensor(self.dp.accountant, tree["history"])  # type: ignore[arg-type]
        return DPFedAvgState(float(tree["clip_norm"]), accountant, int(tree["rounds"]))
