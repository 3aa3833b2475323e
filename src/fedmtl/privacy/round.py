"""One round of private aggregation, per parameter group: DP clipping/noise composed with secure aggregation.

Order of operations (client-level DP-FedAvg of McMahan et al., 2018, under the secure aggregation of
Bonawitz et al., 2017):

1. each client clips its *whole* update (all groups it holds) to C (DP on);
2. it splits the update into its groups' flat vectors; under distributed DP it adds its noise share
   per group; under secure aggregation it quantises and masks them;
3. the server obtains per-group sums over each group's surviving holders (secure or plain);
4. server-placement DP noises each sum with std ``sigma C`` (distributed: only a top-up if too
   few holders contributed);
5. each group's mean is its sum over a denominator: with DP the (pre-dropout) number of holders in
   the cohort, unweighted; without DP the secure/plain sum of weights (weighted FedAvg);
6. DP closes the round: accountant step, adaptive clip update from the (secure) count of unclipped
   clients.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmtl.config.privacy import PrivacyConfig
from fedmtl.privacy.dp.dpfedavg import DPFedAvg, DPFedAvgState, RoundPrivacy
from fedmtl.privacy.secagg.aggregate import sample_dropouts, secure_aggregate
from fedmtl.privacy.secagg.protocol import ProtocolStats

COUNT_GROUP = "__dp_unclipped__"


def split_groups(delta: Mapping[str, Tensor], param_groups: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """Parameter name -> tensor, into group -> flat vector, for the groups ``delta`` holds entirely."""
    out = {}
    for g, names in param_groups.items():
        present = [n in delta for n in names]
        if names and all(present):
            out[g] = torch.cat([delta[n].reshape(-1) for n in names])
        elif any(present):
            raise ValueError(f"update holds only part of parameter group {g!r}")
    return out


def merge_groups(
    flat: Mapping[str, Tensor], param_groups: Mapping[str, Sequence[str]], like: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Inverse of :func:`split_groups`: shapes and dtypes from ``like`` (name -> tensor)."""
    out = {}
    for g, vec in flat.items():
        offset = 0
        for n in param_groups[g]:
            k = like[n].numel()
            out[n] = vec[offset : offset + k].reshape(like[n].shape).to(like[n].dtype)
            offset += k
        if offset != vec.numel():
            raise ValueError(f"group {g!r} vector has {vec.numel()} values, its parameters {offset}")
    return out


@dataclass(frozen=True)
class PrivateRoundResult:
    """The round's aggregate and bookkeeping.

    Attributes:
        mean: parameter name -> aggregated delta, for every group that was revealed.
        contributors: group -> client ids whose updates are in its sum.
        withheld: groups not revealed (too few surviving holders); leave their parameters unchanged.
        dp_state: the DP state for the next round (None without DP).
        privacy: epsilon etc. after this round (None without DP).
        secagg: protocol cost (None without secure aggregation).
        norms: client id -> update norm before clipping (DP only; for logs, not for release).
        dropped: clients whose masked inputs never arrived (secure aggregation's dropouts): in no sum.
    """

    mean: dict[str, Tensor]
    contributors: dict[str, tuple[int, ...]]
    withheld: tuple[str, ...]
    dp_state: DPFedAvgState | None
    privacy: RoundPrivacy | None
    secagg: ProtocolStats | None
    norms: dict[int, float]
    dropped: tuple[int, ...] = ()


def noise_shares_for(holders: Mapping[str, int], cfg: PrivacyConfig) -> dict[str, int]:
    """m_g for distributed noise: the expected surviving holders of each group (at least 1)."""
    rate = cfg.secure_aggregation.dropout_rate if cfg.secure_aggregation is not None else 0.0
    return {g: max(1, math.floor(n * (1 - rate))) for g, n in holders.items()}


def client_vectors(
    delta: Mapping[str, Tensor],
    param_groups: Mapping[str, Sequence[str]],
    *,
    dp: DPFedAvg | None,
    dp_state: DPFedAvgState | None,
) -> tuple[dict[str, Tensor], float, float]:
    """Step 1-2a on one client: clip its whole update (DP), split it into its groups' float64 vectors.

    Returns the vectors, the update's norm before clipping and 1.0 if it was not clipped (0.0 if it was;
    both 0.0 without DP).
    """
    norm = unclipped = 0.0
    if dp is not None and dp_state is not None:
        out = dp.privatize_client(delta, dp_state)
        delta, norm, unclipped = out.delta, out.norm, out.unclipped
    return {g: v.to(torch.float64) for g, v in split_groups(delta, param_groups).items()}, norm, unclipped


def client_noise(
    vectors: Mapping[str, Tensor],
    unclipped: float,
    *,
    dp: DPFedAvg | None,
    dp_state: DPFedAvgState | None,
    noise_shares: Mapping[str, int],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """Step 2b on one client: its share of distributed DP noise per group, and its unclipped bit for adaptive
    clipping as one more group (:data:`COUNT_GROUP`), summed securely with the rest."""
    out = dict(vectors)
    if dp is not None and dp_state is not None and dp.placement == "distributed":
        out = dp.client_noise(out, dp_state, noise_shares, generator=generator)
    if dp is not None and dp.adaptive is not None:
        out = {**out, COUNT_GROUP: torch.tensor([unclipped], dtype=torch.float64)}
    return out


def finish_round(
    sums: Mapping[str, Tensor],
    weight_sums: Mapping[str, float],
    contributors: Mapping[str, tuple[int, ...]],
    *,
    holders: Mapping[str, int],
    noise_shares: Mapping[str, int],
    param_groups: Mapping[str, Sequence[str]],
    like: Mapping[str, Tensor],
    dp: DPFedAvg | None,
    dp_state: DPFedAvgState | None,
    generator: torch.Generator | None,
    withheld: Sequence[str] = (),
    stats: ProtocolStats | None = None,
    norms: Mapping[int, float] | None = None,
    dropped: Sequence[int] = (),
) -> PrivateRoundResult:
    """Steps 4-6 on the server, from the per-group sums (secure or plain): DP's server noise, the means, DP's
    accounting and adaptive clip update.

    Args:
        sums / weight_sums / contributors: per group, as secure aggregation reveals them (the count group
            included under adaptive clipping).
        holders: group -> holders in the cohort before dropouts (DP's denominator).
        noise_shares: group -> m_g (:func:`noise_shares_for`).
        like: parameter name -> a tensor of its shape and dtype.
    """
    sums, contributors = dict(sums), dict(contributors)
    count = sums.pop(COUNT_GROUP, torch.zeros(1))
    contributors.pop(COUNT_GROUP, None)
    privacy = None
    new_state = dp_state
    if dp is not None and dp_state is not None:
        sums = dp.noise_sums(
            sums,
            dp_state,
            generator=generator,
            contributors={g: len(contributors[g]) for g in sums},
            noise_shares=noise_shares,
        )
        means = {g: s / holders[g] for g, s in sums.items()}
        new_state, privacy = dp.server_step(dp_state, unclipped_count=float(count[0]), generator=generator)
    else:
        means = {g: s / weight_sums[g] for g, s in sums.items() if weight_sums[g] > 0}
    return PrivateRoundResult(
        mean=merge_groups(means, param_groups, like),
        contributors=contributors,
        withheld=tuple(withheld),
        dp_state=new_state,
        privacy=privacy,
        secagg=stats,
        norms=dict(norms or {}),
        dropped=tuple(dropped),
    )


def private_aggregate(
    deltas: Mapping[int, Mapping[str, Tensor]],
    param_groups: Mapping[str, Sequence[str]],
    cfg: PrivacyConfig,
    *,
    dp: DPFedAvg | None = None,
    dp_state: DPFedAvgState | None = None,
    weights: Mapping[int, Mapping[str, float]] | None = None,
    dropped: Collection[int] | None = None,
    generator: torch.Generator | None = None,
) -> PrivateRoundResult:
    """Aggregate one round's client deltas per parameter group under ``cfg`` (DP and/or secure aggregation).

    Args:
        deltas: client id -> parameter name -> delta (each client sends the groups it holds).
        param_groups: group -> parameter names (``"shared"``, ``"task:<name>"``, ...).
        cfg: the privacy config.
        dp: the resolved DP plan (required iff ``cfg.dp`` is set); ``dp_state`` its current state.
        weights: client -> group -> weight, used without DP (FedAvg weights; under secure aggregation
            they must lie in [0, 1], e.g. samples / a public cap). None: unweighted.
        dropped: clients whose updates never arrive (None: sampled from the secure-aggregation
            dropout rate; no dropouts without secure aggregation).
        generator: the round's generator.
    """
    if (cfg.dp is None) != (dp is None) or (dp is None) != (dp_state is None):
        raise ValueError("pass dp and dp_state exactly when cfg.dp is set")
    if not deltas:
        raise ValueError("private_aggregate needs at least one client delta")
    like = {n: t for d in deltas.values() for n, t in d.items()}
    groups: dict[int, dict[str, Tensor]] = {}
    norms: dict[int, float] = {}
    unclipped: dict[int, float] = {}
    for c, delta in sorted(deltas.items()):
        groups[c], norm, unclipped[c] = client_vectors(delta, param_groups, dp=dp, dp_state=dp_state)
        if dp is not None:
            norms[c] = norm
    holders = {g: sum(g in v for v in groups.values()) for g in param_groups}
    holders = {g: n for g, n in holders.items() if n > 0}
    shares = noise_shares_for(holders, cfg)
    groups = {
        c: client_noise(v, unclipped[c], dp=dp, dp_state=dp_state, noise_shares=shares, generator=generator)
        for c, v in groups.items()
    }
    use_weights = None if dp is not None else weights

    stats = None
    gone_in_protocol: tuple[int, ...] = ()
    if cfg.secure_aggregation is not None:
        sa = secure_aggregate(
            groups,
            cfg.secure_aggregation,
            weights=None
            if use_weights is None
            else {c: {**use_weights[c], COUNT_GROUP: 1.0} for c in groups},
            dropped=dropped,
            generator=generator,
            clip_ranges={COUNT_GROUP: 1.0},
        )
        sums, weight_sums, contributors, withheld, stats, gone_in_protocol = (
            sa.sums,
            sa.weight_sums,
            sa.contributors,
            sa.withheld,
            sa.stats,
            sa.dropped,
        )
    else:
        gone = frozenset(dropped or ())
        sums, weight_sums, contributors = {}, {}, {}
        for g in sorted({g for v in groups.values() for g in v}):
            who = tuple(c for c in sorted(groups) if g in groups[c] and c not in gone)
            if not who:
                continue
            w = {c: (1.0 if use_weights is None else float(use_weights[c][g])) for c in who}
            sums[g] = torch.stack([w[c] * groups[c][g] for c in who]).sum(0)
            weight_sums[g], contributors[g] = sum(w.values()), who
        withheld = ()
    return finish_round(
        sums,
        weight_sums,
        contributors,
        holders=holders,
        noise_shares=shares,
        param_groups=param_groups,
        like=like,
        dp=dp,
        dp_state=dp_state,
        generator=generator,
        withheld=withheld,
        stats=stats,
        norms=norms,
        dropped=gone_in_protocol,
    )


__all__ = [
    "COUNT_GROUP",
    "PrivateRoundResult",
    "client_noise",
    "client_vectors",
    "finish_round",
    "merge_groups",
    "noise_shares_for",
    "private_aggregate",
    "sample_dropouts",
    "split_groups",
]
