"""One round through every piece, as the federated loop drives them (the integration contract)."""

from __future__ import annotations

import pytest
import torch

from fedmtl.comm import PayloadError, build_link, build_links
from fedmtl.config.comm import CommConfig
from fedmtl.config.training import ServerConfig
from fedmtl.fl.aggregation import aggregate_by_group, build_aggregator
from fedmtl.fl.byzantine import attack, malicious_clients
from fedmtl.fl.server_opt import build_server_optimizer
from fedmtl.fl.update import ClientUpdate

PARAMS = {
    "trunk.w": torch.zeros(6, 4),
    "trunk.b": torch.zeros(6),
    "head_a.w": torch.zeros(2, 6),
    "head_b.w": torch.zeros(3, 6),
}
GROUPS = {"shared": ["trunk.w", "trunk.b"], "task:a": ["head_a.w"], "task:b": ["head_b.w"]}


def test_round_with_compression_attackers_robust_aggregation_and_fedadam():
    comm = CommConfig(
        uplink=[{"name": "topk", "fraction": 0.5}, {"name": "int8"}, {"name": "zstd"}],
        downlink=[{"name": "fp16"}],
    )
    server = ServerConfig(
        optimizer={"name": "fedadam", "lr": 0.1},
        aggregator={"name": "median"},
        byzantine={"fraction": 0.25, "attack": "scaled", "scale": 100.0},
    )
    up, down = build_links(comm)
    opt = build_server_optimizer(server.optimizer)
    agg = build_aggregator(server.aggregator)
    bad = malicious_clients(range(8), server.byzantine, seed=0)
    assert len(bad) == 2
    params, sstate = dict(PARAMS), opt.init(PARAMS)
    shapes = {k: v.shape for k, v in PARAMS.items()}
    codec_states: dict[int, dict] = {i: {} for i in range(8)}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        data, _ = down.encode(params, {}, g)
        received = down.decode(data, expected=shapes)
        updates, uplink_bytes = [], 0
        for cid in range(8):
            head = "head_a.w" if cid % 2 else "head_b.w"
            delta = {k: torch.full_like(received[k], 0.1) for k in ("trunk.w", "trunk.b", head)}
            if cid in bad:
                delta = attack(delta, server.byzantine, g)
            payload, codec_states[cid] = up.encode(delta, codec_states[cid], g)
            uplink_bytes += len(payload)
            if cid == 7:
                payload = payload[:-5]  # a broken client: dropped, never crashes the server
            try:
                got = up.decode(payload, expected=shapes)
            except PayloadError as exc:
                assert "truncated" in str(exc)
                continue
            updates.append(ClientUpdate(cid, got, 10, {head.split("_")[1][0]: 10}))
        assert len(updates) == 7 and uplink_bytes > 0
        aggregated = aggregate_by_group(updates, GROUPS, agg)
        params, sstate = opt.step(params, aggregated, sstate)
    assert (
        bool((params["trunk.w"] > 0).all()) and float(params["trunk.w"].max()) < 1.0
    )  # attackers had no pull


def test_downlink_rejects_update_only_codecs_and_links_carry_the_limit():
    with pytest.raises(ValueError, match="downlink carries the global parameters"):
        CommConfig(downlink=[{"name": "topk"}])
    up, down = build_links(CommConfig(max_payload_mb=0.001))
    assert up.max_payload_bytes == down.max_payload_bytes == 1048
    with pytest.raises(PayloadError, match="oversized"):
        up.decode(build_link([]).encode({"w": torch.zeros(1000)}, {})[0])
