"""The general vectorised engine matches the sequential reference for every algorithm, balancer, scheme
and model family (parameters within 1e-5 after a few rounds, client states alike)."""

from __future__ import annotations

import pytest
import torch
from _helpers import max_diff, run, setup

from fedmtl import registry
from fedmtl.engine import SequentialEngine, VectorizedEngine

TOL = 1e-5
HETERO = ["data.task_assignment.name=random_subset", "data.task_assignment.tasks_per_client=2", "data.source.tasks=[digit,parity,mod3]"]

ALGORITHMS = {
    "fedprox": ["algorithm.name=fedprox", "algorithm.mu=0.1"],
    "scaffold": ["algorithm.name=scaffold", "client.optimizer.momentum=0"],
    "fedper": ["algorithm.name=fedper"],
    "fedrep": ["algorithm.name=fedrep", "algorithm.head_epochs=1"],
    # equal client sizes: BatchNorm over the 2-3 row batches a quantity skew leaves amplifies float32 rounding
    # (batched vs per-client reductions) to ~5e-5 after two rounds; with full batches the engines agree to 3e-8
    "fedbn": ["algorithm.name=fedbn", "model.trunk.norm=batch", "data.partition.name=iid"],
    "ditto": ["algorithm.name=ditto", "algorithm.lam=0.5"],
    "apfl": ["algorithm.name=apfl", "algorithm.alpha_lr=0.05"],
    "pfedme": ["algorithm.name=pfedme", "algorithm.inner_steps=2"],
    "ifca": ["algorithm.name=ifca", "algorithm.clusters=2"],
    "fedem": ["algorithm.name=fedem", "algorithm.components=2"],
    "mocha": ["algorithm.name=mocha"],
    "local": ["algorithm.name=local"],
}
#: registered balancers the vectorised engine does not batch, and why (its fallback is tested in test_vectorized.py)
NOT_BATCHED = {"mgda_ub": "balances on the shared representation, which the model hands out of the forward pass"}
#: every registered balancer the vectorised engine batches (a new one is picked up here), with the options it needs
BALANCERS = {
    n: [f"mtl.balancer.name={n}", *(["mtl.balancer.weights={digit: 2.0, mod3: 0.5}"] if n == "static" else [])]
    for n in registry.names("balancer")
    if n not in NOT_BATCHED
}
SCHEMES = {
    "alternating": ["mtl.scheme.name=alternating"],
    "lagrangian": ["mtl.scheme.name=lagrangian", "mtl.scheme.main=digit", "mtl.scheme.constraints={parity: 0.5}"],
}
MODELS = {
    "cnn1d": ["model.trunk.name=cnn1d", "model.trunk.channels=[4]", "model.trunk.hidden=8"],
    "shared_encoder": ["model.name=shared_encoder"],
    "soft_sharing": ["model.name=soft_sharing"],
    "cross_stitch": ["model.name=cross_stitch"],
    "mtan": ["model.name=mtan"],
    "mmoe": ["model.name=mmoe"],
    "cgc": ["model.name=cgc"],
    "ple": ["model.name=ple"],
    "dselect_k": ["model.name=dselect_k"],
    "ltb": ["model.name=ltb"],
    "mtrl": ["model.name=mtrl"],
    "distillation": ["model.name=distillation"],
}


def _compare(overrides: list[str], rounds: int = 2) -> None:
    cfg, data = setup(overrides)
    seq, rs = run(cfg, data, SequentialEngine(), rounds=rounds)
    engine = VectorizedEngine()
    vec, rv = run(cfg, data, engine, rounds=rounds)
    assert engine.last_run["sequential"] == 0, engine.last_run
    assert max_diff(seq.params, vec.params) < TOL
    for a, b in zip(rs, rv):
        assert a.train_loss.keys() == b.train_loss.keys()
        assert all(abs(a.train_loss[t] - b.train_loss[t]) < 1e-4 for t in a.train_loss)
    assert seq.client_states.keys() == vec.client_states.keys()
    for cid, st in seq.client_states.items():
        _same_tree(st.to_tree(), vec.client_states[cid].to_tree(), f"client {cid}")


def _same_tree(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys() if isinstance(a, dict) else a} vs {b.keys() if isinstance(b, dict) else b}"
        for k in a:
            _same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape, where  # type: ignore[union-attr]
        assert float((a.double() - b.double()).abs().max()) < 1e-4 if a.numel() else True, where  # type: ignore[union-attr]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_matches_sequential(name: str) -> None:
    _compare(HETERO + ALGORITHMS[name])


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_balancer_matches_sequential(name: str) -> None:
    _compare(HETERO + BALANCERS[name])


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_matches_sequential(name: str) -> None:
    _compare(["data.source.tasks=[digit,parity]", *SCHEMES[name]])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_family_matches_sequential(name: str) -> None:
    _compare(HETERO + MODELS[name])


def test_methods_compose_on_the_fast_path() -> None:
    """Ditto + PCGrad + MMoE (the W4 workload's combination), Adam and clipping."""
    _compare(HETERO + ALGORITHMS["ditto"] + ["mtl.balancer.name=pcgrad", "model.name=mmoe", "client.optimizer.name=adam", "client.optimizer.lr=0.01", "client.max_grad_norm=0.5"])


DP_SGD = ["privacy.dp_sgd.noise_multiplier=0.8", "privacy.dp_sgd.max_grad_norm=0.5"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="fedavg-poisson"),
        pytest.param(["privacy.dp_sgd.poisson_sampling=false", "algorithm.name=fedper", "client.optimizer.name=adam", "client.optimizer.lr=0.01"], id="fedper-adam-shuffled"),
        pytest.param(["privacy.dp_sgd.noise_multiplier=null", "privacy.dp_sgd.target_epsilon=4.0", "model.name=soft_sharing", "mtl.balancer.name=uw"], id="target-epsilon-soft-sharing-uw"),
    ],
)
def test_dp_sgd_is_batched_and_matches_sequential(extra: list[str]) -> None:
    """DP-SGD runs on the fast path: the same Poisson batches, clipped example gradients and noise draws per
    client as the one-client trainer, and the same accounting (each client's history and epsilon)."""
    _compare(HETERO + DP_SGD + extra)


def test_every_registered_algorithm_and_model_is_compared() -> None:
    """A new algorithm or model (registered beside its code) must join the parity tests above."""
    assert set(registry.names("algorithm")) - set(ALGORITHMS) == {"fedavg"}  # the default: every test above runs it
    # hard_sharing: the default; import: a user's own module (test_distributed.py runs one on the engines)
    assert set(registry.names("model")) - set(MODELS) == {"hard_sharing", "import"}


@pytest.mark.parametrize("balancer", ["dwa", "famo"])
def test_engines_continue_each_others_client_state(balancer: str) -> None:
    """A round on the vectorised engine then one on the sequential engine equals two sequential rounds: the
    objective state each engine writes is the one the other reads (the old vectorised engine left out
    ``scheme``, and the sequential trainer then raised ``KeyError: 'scheme'`` with DWA)."""
    from fedmtl.fl.federation import Federation
    from fedmtl.mtl import build_model

    cfg, data = setup(HETERO + [f"mtl.balancer.name={balancer}"])
    reference, _ = run(cfg, data, SequentialEngine(), rounds=2)
    mixed, _ = run(cfg, data, VectorizedEngine(), rounds=1)
    fed = Federation(cfg, data, build_model(cfg.model, data.input_shape, data.tasks), SequentialEngine())
    mixed, _ = fed.round(mixed)
    assert max_diff(reference.params, mixed.params) < TOL
    for cid, st in reference.client_states.items():
        _same_tree(st.to_tree(), mixed.client_states[cid].to_tree(), f"client {cid}")


@pytest.mark.parametrize(
    "optimizer",
    [
        pytest.param(["client.optimizer.momentum=0.9"], id="momentum"),
        pytest.param(["client.optimizer.name=adam", "client.optimizer.lr=0.01"], id="adam"),
        pytest.param(["client.optimizer.momentum=0.9", "client.optimizer.weight_decay=0.01"], id="momentum+wd"),
        pytest.param(["client.optimizer.weight_decay=0.01"], id="wd"),
    ],
)
def test_untrained_rows_stay_put_under_every_optimiser(optimizer: list[str]) -> None:
    # task-heterogeneous clients of skewed sizes: each client's heads of tasks it lacks are masked for the
    # whole chunk (momentum and moments of those rows stay zero, so masking the gradient is exact); weight
    # decay moves them at zero gradient, so they are restored after each step
    _compare(HETERO + optimizer)


def test_ditto_trains_both_models_in_one_batched_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmtl.engine import lockstep

    cfg, data = setup(ALGORITHMS["ditto"])
    asked: list[int] = []
    engine = VectorizedEngine()
    real = lockstep.run_lockstep

    def counting(algorithm, trainer, jobs, train_many, grads_many):  # type: ignore[no-untyped-def]
        def recorded(requests):  # type: ignore[no-untyped-def]
            asked.append(len(requests))
            return train_many(requests)

        return real(algorithm, trainer, jobs, recorded, grads_many)

    monkeypatch.setattr("fedmtl.engine.vectorized.run_lockstep", counting)
    run(cfg, data, engine, rounds=1)
    # one answer for every client's global and personal training together
    assert asked == [2 * cfg.server.clients_per_round]
