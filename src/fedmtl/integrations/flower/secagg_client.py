"""A SuperNode's side of secure aggregation: the simulation's client, one stage per message.

The client is :class:`~fedmtl.privacy.secagg.protocol.SecAggClient` itself; between messages its
round state (private keys, received shares) and its update stay in the node's ``Context.state``, never
on the wire. Keys, seeds, share polynomials, DP noise and stochastic rounding draw from the operating
system's randomness (``secrets`` / ``os.urandom``): nothing the server knows can regenerate them.
The update is privatised and quantised exactly as the simulation does (:func:`client_vectors`,
:func:`client_noise`, :func:`encode_input`), with the public plan the server sends.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

import torch
from flwr.app import ConfigRecord, Context, RecordDict

from fedmtl.config import ExperimentConfig
from fedmtl.data.dataset import ClientData
from fedmtl.fl.node import ClientNode, ClientReply
from fedmtl.fl.sampling import cohort_size
from fedmtl.integrations.flower import messages as msgs
from fedmtl.integrations.flower import secagg_messages as sm
from fedmtl.mtl import MultiTaskModel
from fedmtl.privacy.dp.dpfedavg import DPFedAvg, DPFedAvgState
from fedmtl.privacy.round import client_noise, client_vectors
from fedmtl.privacy.secagg.aggregate import encode_input, ring_bounds
from fedmtl.privacy.secagg.protocol import SecAggClient, SecAggError

log = logging.getLogger("fedmtl")
STATE = "fedmtl.secagg-state"  # the node's own record: the round's client state and its withheld update


def os_generator() -> torch.Generator:
    """A generator seeded from the OS CSPRNG: what a real client's noise and rounding draw from."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def _stored(context: Context) -> tuple[SecAggClient, bytes]:
    if STATE not in context.state.config_records:
        raise SecAggError("this node holds no secure-aggregation round (it restarted, or was not in the round)")
    rec = context.state.config_records[STATE]
    client = SecAggClient.from_bytes(bytes(rec["client"]))  # type: ignore[arg-type]
    return client, bytes(rec["payload"])  # type: ignore[arg-type]


def _store(context: Context, client: SecAggClient, payload: bytes) -> None:
    context.state[STATE] = ConfigRecord({"client": client.to_bytes(), "payload": payload})


def withhold(content: RecordDict, context: Context, reply: ClientReply) -> RecordDict:
    """A train reply under secure aggregation: the update stays on the node, its public keys go out.

    ``content`` is the train message's content (it holds the offer: round id, groups, ring size).
    """
    offer = sm.read_offer(content)
    assert offer is not None
    round_id, groups, bits = offer
    client = SecAggClient(reply.client_id, groups, bits=bits, round_id=round_id, generator=None)
    _store(context, client, reply.payload)
    return sm.advertise(msgs.reply_content(replace(reply, payload=b"")), client.advertise())


def share_keys(content: RecordDict, context: Context) -> RecordDict:
    """Stage 1: Shamir-share the mask key and self-mask seeds among the neighbours, encrypted to each."""
    client, payload = _stored(context)
    adverts, holders, threshold = sm.read_share_request(content)
    shares = client.share_keys(adverts, holders, threshold)
    _store(context, client, payload)
    log.info("client %d: shared its keys with %d neighbour(s) (secure aggregation)", client.id, len(adverts))
    return sm.shares_reply(shares)


def _dp(cfg: ExperimentConfig, clip_norm: float | None) -> tuple[DPFedAvg | None, DPFedAvgState | None]:
    """The run's DP plan as the server builds it, at this round's clip norm (None without DP)."""
    if cfg.privacy.dp is None:
        return None, None
    if clip_norm is None or not clip_norm > 0:
        raise SecAggError(f"the run has DP but the server sent clip norm {clip_norm}")
    size = cohort_size(cfg.data.num_clients, cfg.server.clients_per_round, cfg.server.fraction)
    dp = DPFedAvg.from_config(cfg.privacy.dp, num_clients=cfg.data.num_clients, cohort_size=size, rounds=cfg.server.rounds)
    return dp, replace(dp.init(), clip_norm=clip_norm)


def masked_input(
    content: RecordDict, context: Context, cfg: ExperimentConfig, model: MultiTaskModel, node: ClientNode, data: ClientData
) -> RecordDict:
    """Stage 2: decode the update kept since training, privatise and quantise it as planned, mask it."""
    client, payload = _stored(context)
    inbox, plan = sm.read_mask_request(content, client.id)
    sa = cfg.privacy.secure_aggregation
    if sa is None:
        raise SecAggError("the run's config has no privacy.secure_aggregation")
    if set(plan.groups) != set(client.self_seeds):
        raise SecAggError(f"masking plan for groups {sorted(plan.groups)}, this client holds {sorted(client.self_seeds)}")
    specs = {n: torch.empty_like(p, device="meta") for n, p in model.named_parameters()}
    names = node.algorithm.uploaded_names(model, data)  # what it encoded, as Federation.collect decodes it
    delta = node.up.decode(payload, expected={n: specs[n] for n in names})
    param_groups = {g: list(v.get("names", [])) for g, v in plan.groups.items()}
    dp, dp_state = _dp(cfg, plan.clip_norm)
    gen = os_generator()
    vectors, _, unclipped = client_vectors(delta, {g: n for g, n in param_groups.items() if n}, dp=dp, dp_state=dp_state)
    vectors = client_noise(vectors, unclipped, dp=dp, dp_state=dp_state, noise_shares=plan.noise_shares, generator=gen)
    if set(vectors) != set(plan.groups):
        raise SecAggError(f"the update holds groups {sorted(vectors)}, the plan {sorted(plan.groups)}")
    inputs = {}
    for g, spec in plan.groups.items():
        bounds = ring_bounds(
            int(spec["size"]), int(spec["holders"]), sa, weighted=plan.weights is not None, clip_range=float(spec["clip"])
        )
        weight = None if plan.weights is None else plan.weights[g]
        inputs[g] = encode_input(vectors[g], bounds, sa, weight=weight, generator=gen, who=f"client {client.id}, group {g!r}")
    masked = client.masked_input(inbox, inputs)
    _store(context, client, b"")  # the update is no longer needed on the node either
    return sm.masked_reply(masked, client.bits)


def unmask(content: RecordDict, context: Context) -> RecordDict:
    """Stage 3: reveal self-mask shares of surviving neighbours, mask-key shares of dropped ones."""
    client, _ = _stored(context)
    survivors, min_group = sm.read_unmask_request(content)
    reveal = client.unmask(survivors, min_group)
    del context.state[STATE]  # the round is over for this node
    return sm.reveal_reply(reveal)


__all__ = ["STATE", "masked_input", "os_generator", "share_keys", "unmask", "withhold"]
