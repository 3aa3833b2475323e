"""Secure aggregation over the Flower grid (in-process grid running the real ClientApp): the simulation's
protocol as message exchanges; the server never holds an update; dropouts recovered or the round abandoned."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _flower_fakes import SMALL, FakeClock, FakeGrid, round_records, simulate
from flwr.app import Message

from fedmtl.config import config_from_dict
from fedmtl.integrations.flower import FlowerSettings, make_client_app
from fedmtl.integrations.flower import secagg_messages as sm
from fedmtl.integrations.flower.server_app import server_for
from fedmtl.runloop.checkpoint import load_latest

pytestmark = [pytest.mark.flower, pytest.mark.usefixtures("shared_partition_cache")]


def _config(tmp_path, rounds=2, secagg=None, dp=None, clients=3):
    data = copy.deepcopy(SMALL)
    data["server"]["rounds"] = rounds
    data["output"]["dir"] = str(tmp_path)
    data["privacy"] = {"secure_aggregation": {"clip_range": 4.0, **(secagg or {})}}
    if dp is not None:
        data["privacy"]["dp"] = dp
    if clients != 3:
        data["data"]["num_clients"] = clients
        data["data"]["task_assignment"] = {"name": "all"}
    return config_from_dict(data)


class RecordingGrid(FakeGrid):
    """A FakeGrid that keeps every reply (what the server received) and can make nodes fail at one stage.

    ``drop_at[node] = message type``: from that message on, the node never answers (killed mid-protocol).
    """

    def __init__(self, drop_at=None, clients=3, tamper=None):
        super().__init__(make_client_app(), {101 + i: i for i in range(clients)})
        self.drop_at = dict(drop_at or {})
        self.tamper = dict(tamper or {})  # (node, message type) -> a function changing that node's reply content
        self.dead: set[int] = set()
        self.received: list[Message] = []

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            node = m.metadata.dst_node_id
            if self.drop_at.get(node) == m.metadata.message_type:
                self.dead.add(node)
        live = [m for m in messages if m.metadata.dst_node_id not in self.dead]
        ids = iter(super().push_messages(live))
        return [next(ids) if m.metadata.dst_node_id not in self.dead else "" for m in messages]

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n not in self.dead]

    def pull_messages(self, message_ids):
        out = list(super().pull_messages(message_ids))
        for m in out:
            change = self.tamper.get((m.metadata.src_node_id, m.metadata.message_type))
            if change is not None and not m.has_error():
                change(m.content)
        self.received += out
        return out


def _run(tmp_path, grid, cfg, name="flower"):
    clock = FakeClock()
    settings = FlowerSettings(min_nodes=len(grid.partitions), min_replies=2, round_timeout=30.0, poll_interval=0.5)
    server = server_for(cfg, settings, grid, tmp_path / name, clock=clock, sleep=clock.sleep)
    return server.run()


def test_secure_aggregation_over_the_grid_matches_the_simulation(tmp_path):
    """Task-heterogeneous clients (0: both heads, 1: digit, 2: parity): each head masked among its holders."""
    cfg = _config(tmp_path, rounds=2)
    sim = simulate(cfg)
    grid = RecordingGrid()
    summary = _run(tmp_path, grid, cfg)
    state, _ = load_latest(tmp_path / "flower")
    assert summary["rounds_completed"] == 2
    for name, value in sim.params.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-5, rtol=0)
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count(sm.SHARE) == kinds.count(sm.MASK) == kinds.count(sm.UNMASK) == 6  # 3 nodes x 2 rounds
    history = round_records(tmp_path / "flower")
    assert all(h["replies"] == 3 and h["privacy"]["secagg_upload_bytes_per_client"] > 0 for h in history)


def test_the_server_receives_masked_vectors_never_an_update(tmp_path, monkeypatch):
    from fedmtl.privacy.secagg.protocol import SecAggClient

    inputs: dict[int, dict[str, np.ndarray]] = {}
    original = SecAggClient.masked_input

    def spy(self, inbox, x):  # the node's own quantised update, as it enters masking
        inputs[self.id] = {g: v.copy() for g, v in x.items()}
        return original(self, inbox, x)

    monkeypatch.setattr(SecAggClient, "masked_input", spy)
    cfg = _config(tmp_path, rounds=1, secagg={"rounding": "deterministic"})
    grid = RecordingGrid()
    _run(tmp_path, grid, cfg)
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train) == 3
    assert all(m.content.array_records["fedmtl.payload"]["bytes"].numpy().size == 0 for m in train)
    assert all("fedmtl.outbox" not in m.content.array_records for m in train)
    bits = cfg.privacy.secure_aggregation.bits
    received = {}
    for m in (m for m in grid.received if m.metadata.message_type == sm.MASK):
        rec = m.content.config_records[sm.SECAGG]
        node = grid.partitions[m.metadata.src_node_id]
        received[node] = {g: np.frombuffer(v, dtype=sm.ring_dtype(bits)) for g, v in zip(rec["groups"], rec["values"], strict=True)}
    assert sorted(received) == sorted(inputs) == [0, 1, 2]
    ring = float(1 << bits)
    for c in inputs:
        assert set(received[c]) == set(inputs[c])
        for g, x in inputs[c].items():
            y = received[c][g].astype(np.uint64)
            assert (y != x).mean() > 0.99  # what the server got for this client is not its update ...
            if y.size > 100:  # ... but uniform on the ring, where the update sits in [0, L] around L/2
                assert abs(float(y.astype(np.float64).mean()) / ring - 0.5) < 0.05
                assert float(y.astype(np.float64).std()) / ring > 0.25  # std of U(0, 1) is 0.289
    # the sum the server recovers is the sum of the inputs: the masks cancel only in the sum
    state, _ = load_latest(tmp_path / "flower")
    assert state.round == 1


@pytest.mark.parametrize(
    ("stage", "summed"),
    [(sm.SHARE, [0, 1, 2]), (sm.MASK, [0, 1, 2]), (sm.UNMASK, [0, 1, 2, 3])],
    ids=["before-sharing-keys", "before-masked-input", "after-masked-input"],
)
def test_a_node_that_drops_mid_protocol_is_recovered_exactly(tmp_path, stage, summed):
    """4 clients with both tasks, t=2: client 3 dies after advertising its keys (the others share again among
    themselves), after sharing them (its pairwise masks are rebuilt from shares of its mask key) or after
    sending its masked input (summed; its reveal is not needed). The result is the plain FedAvg mean over the
    summed clients, to the quantisation step."""
    cfg = _config(tmp_path, rounds=1, secagg={"threshold": 2, "rounding": "deterministic"}, clients=4)
    grid = RecordingGrid(drop_at={104: stage}, clients=4)
    _run(tmp_path, grid, cfg)
    (h,) = round_records(tmp_path / "flower")
    assert h["replies"] == len(summed) and "skipped" not in h, h
    if len(summed) == 3:
        assert {sm.SHARE: "share keys", sm.MASK: "masked input"}[stage] in h["dropped"]["3"], h
    state, _ = load_latest(tmp_path / "flower")
    plain = _config(tmp_path, rounds=1, clients=4).model_copy(update={"privacy": cfg.privacy.model_copy(update={"secure_aggregation": None})})
    ref = _plain_mean(tmp_path, plain, contributors=summed)
    for name, value in ref.items():
        torch.testing.assert_close(state.params[name], value, atol=1e-6, rtol=0)


def _plain_mean(tmp_path, cfg, contributors):
    """The global model after one plain FedAvg round over ``contributors`` (no secure aggregation)."""
    grid = FakeGrid(make_client_app(), {101 + c: c for c in contributors})
    clock = FakeClock()
    # every registered node answers: the cohort is the contributors (the others are offline)
    grid.partitions.update({101 + c: c for c in range(4) if c not in contributors})
    grid.behaviour.update({101 + c: "offline" for c in range(4) if c not in contributors})
    settings = FlowerSettings(min_nodes=len(contributors), min_replies=2, round_timeout=30.0, poll_interval=0.5)
    server_for(cfg, settings, grid, tmp_path / "plain", clock=clock, sleep=clock.sleep).run()
    state, _ = load_latest(tmp_path / "plain")
    return state.params


def test_below_the_threshold_the_round_is_abandoned_and_the_run_goes_on(tmp_path):
    """t=3 of 3: one node gone after sharing keys leaves 2 masked inputs: nothing revealed, round 1 skipped
    with the reason, round 2 runs with the two nodes left (t resolves again for them)."""
    cfg = _config(tmp_path, rounds=2, secagg={"threshold": 1.0})
    grid = RecordingGrid(drop_at={103: sm.MASK})
    summary = _run(tmp_path, grid, cfg)
    history = round_records(tmp_path / "flower")
    assert summary["rounds_completed"] == 2
    assert "secure aggregation abandoned" in history[0]["skipped"] and "threshold t=3" in history[0]["skipped"]
    assert "2" in history[0]["dropped"]
    assert "skipped" not in history[1] and history[1]["replies"] == 2


def test_distributed_dp_composes_with_secure_aggregation_on_the_grid(tmp_path):
    """DP clipping on the nodes, the noise shared among them, the accountant on the server: epsilon and the
    clip norm after each round equal the simulation's (the noise itself is each node's own)."""
    dp = {"noise_multiplier": 0.5, "clip_norm": 0.5, "placement": "distributed"}
    cfg = _config(tmp_path, rounds=2, dp=dp)
    sim = simulate(cfg)
    _run(tmp_path, RecordingGrid(), cfg)
    history = round_records(tmp_path / "flower")
    for h, s in zip(history, sim.history, strict=True):
        assert h["privacy"]["epsilon"] == pytest.approx(s["privacy"]["epsilon"])
        assert h["privacy"]["clip_norm"] == pytest.approx(s["privacy"]["clip_norm"])
    state, _ = load_latest(tmp_path / "flower")
    # noise of std sigma*C/sqrt(m) per node: the model moved, differently from the simulation's draw
    moved = [not torch.equal(state.params[n], v) for n, v in sim.params.items()]
    assert all(torch.isfinite(state.params[n]).all() for n in sim.params) and any(moved)


def _wrong_length(content):
    rec = content.config_records[sm.SECAGG]
    rec["values"] = [v[:-4] for v in rec["values"]]


def _clear_update(content):
    from fedmtl.integrations.flower.messages import payload_record

    content["fedmtl.payload"] = payload_record(b"\x00" * 64)


@pytest.mark.parametrize(
    ("stage", "change", "reason"),
    [(sm.MASK, _wrong_length, "masked-input reply: group 'shared' has"), ("train", _clear_update, "sent its update in the clear")],
    ids=["short-masked-vector", "update-in-the-clear"],
)
def test_a_malformed_answer_drops_that_node_not_the_round(tmp_path, stage, change, reason):
    """Node 103's answer is altered in transit: it is dropped with the reason; the two others are summed."""
    cfg = _config(tmp_path, rounds=1)
    _run(tmp_path, RecordingGrid(tamper={(103, stage): change}), cfg)
    (h,) = round_records(tmp_path / "flower")
    assert "skipped" not in h and h["replies"] == 2 and reason in h["dropped"]["2"], h
    # client 2 held the trunk and the parity head, which only client 0 holds besides: a sum over one holder would
    # be client 0's own update, so parity is withheld (min_group_survivors = 2); the trunk and digit are summed
    assert h["privacy"]["withheld_groups"] == ["task:parity"]
