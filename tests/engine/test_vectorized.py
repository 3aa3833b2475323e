"""The vectorised engine reproduces the sequential engine's global model (same seed, same batches)."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch
from _helpers import max_diff, run, setup

from fedmtl.config.engine import VectorizedEngine as VectorizedCfg
from fedmtl.engine import SequentialEngine, VectorizedEngine, build_engine
from fedmtl.engine.reducing import Streamed
from fedmtl.fl.federation import Federation
from fedmtl.mtl import Balance, MultiTaskObjective

TOL = 1e-5


def streamed(chunk_clients: int = 1024):  # noqa: ANN201 - a federation_cls for _helpers.run
    """A Federation whose default transport is the streamed reduction."""
    return partial(Federation, transport=partial(Streamed, chunk_clients=chunk_clients))

CASES = {
    "single-task": ["data.source.tasks=[digit]"],
    "multi-task": [],
    "task-heterogeneous": [
        "data.task_assignment.name=random_subset",
        "data.task_assignment.tasks_per_client=1",
        "data.source.tasks=[digit,parity,mod3]",
    ],
    "momentum+wd": ["client.optimizer.momentum=0.9", "client.optimizer.weight_decay=0.01"],
    "adam": ["client.optimizer.name=adam", "client.optimizer.lr=0.01", "client.optimizer.weight_decay=0.001"],
    "clip": ["client.max_grad_norm=0.3"],
    "gelu+head-hidden": ["model.trunk.activation=gelu", "model.head_hidden=[8]"],
    "tanh+static": [
        "model.trunk.activation=tanh",
        "mtl.balancer.name=static",
        "mtl.balancer.weights={digit: 0.3}",
    ],
    "batch>rows": ["client.batch_size=64", "client.epochs=1"],
    # a loss-based balancer that needs each step's local epoch (DWA closes an epoch when it changes)
    "dwa": ["mtl.balancer.name=dwa", "client.epochs=3"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_sequential(case: str) -> None:
    cfg, data = setup(CASES[case])
    sizes = {len(c.train) for c in data.clients}
    assert len(sizes) > 1, "clients should have unequal sizes (padded steps and partial batches)"
    seq, rs = run(cfg, data, SequentialEngine())
    vec, rv = run(cfg, data, VectorizedEngine())
    assert max_diff(seq.params, vec.params) < TOL
    for a, b in zip(rs, rv):
        assert a.train_loss.keys() == b.train_loss.keys()
        assert all(abs(a.train_loss[t] - b.train_loss[t]) < 1e-4 for t in a.train_loss)
    for cid, st in seq.client_states.items():
        assert int(st.objective["step"]) == int(vec.client_states[cid].objective["step"])


def test_chunks_and_streaming_round_match_sequential() -> None:
    cfg, data = setup(CASES["task-heterogeneous"])
    seq, rs = run(cfg, data, SequentialEngine())
    vec, rv = run(
        cfg,
        data,
        VectorizedEngine(chunk_clients=2),
        federation_cls=streamed(chunk_clients=3),
    )
    assert max_diff(seq.params, vec.params) < TOL
    # the streamed round counts the bytes it never encodes (identity links) exactly as the plain round
    assert [(r.bytes_down, r.bytes_up) for r in rs] == [(r.bytes_down, r.bytes_up) for r in rv]
    assert [r.updates for r in rs] == [r.updates for r in rv] == [len(r.cohort) for r in rs]


class _RandomWeights:
    """A stateful, random loss weighting (RLW-like, with an EMA in its state): exercises the per-client path."""

    requires = "losses"

    def init(self, num_tasks: int):
        return {"ema": torch.zeros(num_tasks)}

    def __call__(self, inp, state):
        w = torch.softmax(torch.randn(inp.losses.shape, generator=inp.generator), 0) * len(inp.losses)
        return Balance(weights=w), {"ema": 0.9 * state["ema"] + 0.1 * inp.losses}


class _SharedDirection:
    """A gradient-balancing balancer (mean of per-task shared gradients): cannot be vectorised."""

    requires = "shared_grads"

    def init(self, num_tasks: int):
        return {}

    def __call__(self, inp, state):
        return Balance(weights=torch.ones_like(inp.losses), shared_direction=inp.grads.mean(0)), state


def _patch_balancer(monkeypatch: pytest.MonkeyPatch, balancer_cls: type) -> None:
    def build(cfg, tasks):  # noqa: ANN001, ANN202
        return MultiTaskObjective(balancer_cls(), tasks)

    monkeypatch.setattr("fedmtl.fl.client.build_objective", build)
    monkeypatch.setattr("fedmtl.engine.stacked.build_objective", build)
    monkeypatch.setattr("fedmtl.engine.vectorized.build_objective", build)


def test_stateful_random_loss_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_balancer(monkeypatch, _RandomWeights)
    cfg, data = setup(CASES["task-heterogeneous"])
    seq, _ = run(cfg, data, SequentialEngine())
    vec, _ = run(cfg, data, VectorizedEngine())
    assert max_diff(seq.params, vec.params) < TOL
    for cid, st in seq.client_states.items():
        assert torch.allclose(
            st.objective["balancer"]["ema"],
            vec.client_states[cid].objective["balancer"]["ema"],
            atol=1e-5,
        )


def test_gradient_balancer_is_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_balancer(monkeypatch, _SharedDirection)
    cfg, data = setup(CASES["task-heterogeneous"])
    seq, _ = run(cfg, data, SequentialEngine(), rounds=2)
    engine = VectorizedEngine()
    vec, _ = run(cfg, data, engine, rounds=2)
    assert engine.last_run == {"vectorized": cfg.server.clients_per_round, "sequential": 0}
    assert max_diff(seq.params, vec.params) < TOL


class _Unbatchable(torch.nn.Module):
    """A layer with data-dependent control flow (``.item()``): no vmap rule, so the engine must fall back."""

    def forward(self, x):  # noqa: ANN001, ANN201
        return x * 2 if float(x.sum().item()) > 0 else x


def test_unbatchable_model_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    from fedmtl.mtl import build_model

    cfg, data = setup()
    engine = VectorizedEngine()

    def build(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = build_model(*args, **kwargs)
        model.trunk.net.insert(0, _Unbatchable())
        return model

    import _helpers

    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        orig = _helpers.build_model
        _helpers.build_model = build
        try:
            vec, _ = _helpers.run(cfg, data, engine, rounds=2)
            seq, _ = _helpers.run(cfg, data, SequentialEngine(), rounds=2)
        finally:
            _helpers.build_model = orig
    warnings = [r.getMessage() for r in caplog.records if "cannot be batched" in r.getMessage()]
    assert len(warnings) == 1 and "vmap" in warnings[0]
    assert engine.last_run == {"vectorized": 0, "sequential": cfg.server.clients_per_round}
    assert max_diff(seq.params, vec.params) == 0.0


def test_build_engine_and_default_config() -> None:
    from fedmtl.config.engine import DefaultEngine

    assert DefaultEngine is VectorizedCfg
    engine = build_engine(VectorizedCfg(chunk_clients=7))
    assert isinstance(engine, VectorizedEngine) and engine.chunk_clients == 7 and engine.name == "vectorized"


def test_reducing_round_drops_non_finite_updates_like_the_plain_round() -> None:
    cfg, data = setup(["client.optimizer.lr=1e38", "client.epochs=3"])
    plain, rp = run(cfg, data, SequentialEngine(), rounds=1, federation_cls=Federation)
    red, rr = run(cfg, data, VectorizedEngine(), rounds=1, federation_cls=streamed())
    assert rp[0].dropped.keys() == rr[0].dropped.keys() and rp[0].dropped
    assert rp[0].updates == rr[0].updates == len(rp[0].cohort) - len(rp[0].dropped)
    assert max_diff(plain.params, red.params) < TOL
    # both report the training loss of the accepted updates only (the plain round used to count the
    # dropped ones too, and reported a loss here where every update was dropped)
    assert rp[0].train_loss.keys() == rr[0].train_loss.keys()
    assert all(abs(rp[0].train_loss[t] - rr[0].train_loss[t]) < 1e-4 for t in rp[0].train_loss)


def test_make_federation_picks_the_reducing_round() -> None:
    from fedmtl.engine import make_federation
    from fedmtl.mtl import build_model

    cfg, data = setup(["engine.name=vectorized"])
    fed = make_federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks))
    assert isinstance(fed, Federation) and isinstance(fed.transport, Streamed)
    assert fed.engine.name == "vectorized" and not fed.transport.distributed


def test_streamed_round_never_applies_a_non_finite_model() -> None:
    """Finite updates can still overflow the mean or the server step: the streamed round skips the round."""
    cfg, data = setup()
    from fedmtl.mtl import build_model

    fed = streamed()(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), VectorizedEngine())
    state = fed.init_state()
    real_step = fed.server_opt.step
    fed.server_opt.step = lambda p, u, s: ({n: v * float("inf") for n, v in real_step(p, u, s)[0].items()}, s)  # type: ignore[method-assign]
    after, report = fed.round(state)
    assert "non-finite" in report.skipped and after.round == state.round + 1
    assert max_diff(state.params, after.params) == 0.0


def test_streamed_round_batches_a_forward_reading_penalty_per_task_set() -> None:
    """Distillation's penalty reads the forward pass: the stacked reduction must not mix task sets in one forward."""
    cfg, data = setup(CASES["task-heterogeneous"] + ["model.name=distillation"])
    seq, _ = run(cfg, data, SequentialEngine())
    vec, _ = run(cfg, data, VectorizedEngine(), federation_cls=streamed())
    assert max_diff(seq.params, vec.params) < TOL
