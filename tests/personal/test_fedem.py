"""FedEM: the E-step, the gate (FedEM without Assumption 2) and the mixture a client is evaluated with."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from fedmtl.config import config_from_dict
from fedmtl.data.dataset import Split
from fedmtl.fl.algorithm import Mixture, ServerContext
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization.fedem import GATE_PREFIX, FedEM, build_gate, e_step
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import build_model
from fedmtl.runloop.evaluation import mixture_sums
from fedmtl.tasks import Task

from .conftest import config, federation


def test_e_step_by_hand() -> None:
    losses = torch.tensor([[0.1, 5.0, 0.2], [3.0, 0.1, 4.0]])
    q, pi = e_step(losses, torch.tensor([0.5, 0.5]))
    assert torch.allclose(q.sum(0), torch.ones(3)) and torch.allclose(pi.sum(), torch.tensor(1.0))
    assert q[0, 0] > 0.9 and q[1, 1] > 0.9 and torch.allclose(pi, q.mean(1))
    # equal likelihoods: the inputs' density ratios (3 : 1, then 1 : 3) decide alone
    ratio = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    q, pi = e_step(torch.ones(2, 2), torch.tensor([0.5, 0.5]), ratio)
    torch.testing.assert_close(q, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    torch.testing.assert_close(pi, torch.tensor([0.5, 0.5]))
    # and against the prior: pi = (0.25, 0.75) cancels a 3 : 1 ratio
    q, _ = e_step(torch.ones(2, 1), torch.tensor([0.25, 0.75]), ratio[:, :1])
    torch.testing.assert_close(q, torch.tensor([[0.5], [0.5]]))


@pytest.mark.parametrize("gate", [True, False], ids=["gated", "paper"])
def test_the_evaluated_mixture_is_the_clients(gate: bool) -> None:
    fed = federation(config({"name": "fedem", "components": 2, "gate": gate}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM) and (alg.gate is not None) == gate
    state, _ = fed.round(fed.init_state())
    assert ("gate" in state.algorithm_state) == gate
    for cid in (0, 4):
        client, cs = fed.data.clients[cid], state.client_states[cid]
        mixture = alg.personal_mixture(fed.model, state.params, client, cs)
        assert mixture is not None
        for k, params in enumerate(mixture.components):
            for n, v in cs.algorithm["fedem_components"][str(k)].items():
                assert torch.equal(params[n], v)
        x = client.test.x
        weights = mixture.weights(x)
        pi = cs.algorithm["fedem_pi"]
        if not gate:
            torch.testing.assert_close(weights, pi.expand(len(x), -1))  # the paper's: the same pi for every input
            continue
        # w(x) ∝ pi exp(s(x)), by hand from the client's own gate
        g = {n[len(GATE_PREFIX) :]: v for n, v in cs.algorithm["fedem_gate"].items()}
        by_hand = pi * torch.func.functional_call(alg.gate, g, (x, ["component"]))["component"].exp()
        torch.testing.assert_close(weights, by_hand / by_hand.sum(1, keepdim=True))
        assert not torch.allclose(weights, weights[:1].expand_as(weights))  # they do depend on the input


def _head_always(params: dict[str, torch.Tensor], cls: int) -> dict[str, torch.Tensor]:
    """``params`` with task a's output layer answering class ``cls`` for every input."""
    out = dict(params)
    weight, bias = [n for n in params if n.startswith("heads.a.")][-2:]
    out[weight] = torch.zeros_like(params[weight])
    out[bias] = torch.full_like(params[bias], -20.0)
    out[bias][cls] = 20.0
    return out


def test_mixture_sums_mix_each_input_with_its_own_weights() -> None:
    """Component A always says class 0, B always class 1; 30 rows of class 0 (x0 = +1), 10 of class 1 (x0 = -1)."""
    fed = federation(config())
    params = fed.init_state().params
    comps = [_head_always(params, 0), _head_always(params, 1)]
    x = torch.zeros(40, 8)
    x[:30, 0], x[30:, 0] = 1.0, -1.0
    split = Split(x, {"a": torch.tensor([0] * 30 + [1] * 10)})

    def routed(inputs: torch.Tensor) -> torch.Tensor:  # each input to the component of its class
        b = (inputs[:, 0] < 0).float()
        return torch.stack([1 - b, b], dim=1)

    def accuracy(weights) -> float:  # type: ignore[no-untyped-def]
        sums = mixture_sums(fed.model, Mixture(comps, weights), split, ["a"], batch_size=16)
        return fed.model.tasks["a"].finalize(sums["a"])["accuracy"]

    assert accuracy(routed) == 1.0
    assert accuracy(lambda inputs: torch.tensor([[0.7, 0.3]]).expand(len(inputs), -1)) == 0.75  # always class 0


def test_fit_gate_is_sgd_on_the_soft_cross_entropy() -> None:
    fed = federation(config({"name": "fedem", "components": 3}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM) and alg.gate is not None
    gate = alg.server_init(fed.init_state().params, 6, torch.Generator().manual_seed(0))["gate"]
    x = torch.randn(10, 8)
    q = torch.softmax(torch.randn(3, 10), dim=0)
    plan = [[torch.arange(10)]]  # one full batch, one step
    pi = torch.tensor([0.2, 0.3, 0.5])
    stepped = alg.fit_gate(gate, pi, x, q, plan, lr=0.5)
    leaves = {n[len(GATE_PREFIX) :]: v.clone().requires_grad_() for n, v in gate.items()}
    logits = torch.func.functional_call(alg.gate, leaves, (x, ["component"]))["component"] + pi.log()  # the client's prior as an offset
    grads = torch.autograd.grad(F.cross_entropy(logits, q.T), list(leaves.values()))  # the reference: torch's soft-target CE
    for (n, v), g in zip(leaves.items(), grads):
        torch.testing.assert_close(stepped[GATE_PREFIX + n], v.detach() - 0.5 * g)


def test_the_gate_learns_which_component_an_input_came_from() -> None:
    fed = federation(config({"name": "fedem", "components": 2}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM)
    gate = alg.server_init(fed.init_state().params, 6, torch.Generator().manual_seed(0))["gate"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    x[:32, 0] += 3.0  # component 0's inputs
    x[32:, 0] -= 3.0
    q = torch.zeros(2, 64)
    q[0, :32], q[1, 32:] = 1.0, 1.0
    plan = [list(torch.randperm(64, generator=gen).split(16)) for _ in range(20)]
    half = torch.tensor([0.5, 0.5])
    fitted = alg.fit_gate(gate, half, x, q, plan, lr=0.2)
    with torch.no_grad():
        w = alg.posterior(fitted, half, x)
    assert bool((w[:32, 0] > 0.5).all()) and bool((w[32:, 1] > 0.5).all())


def test_a_component_the_client_does_not_use_gets_no_weight() -> None:
    """Even where the gate prefers it (by e^5): the client's pi of 1e-9 keeps its weight near 0."""
    fed = federation(config({"name": "fedem", "components": 2}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM) and alg.gate is not None
    gate = {GATE_PREFIX + n: torch.zeros_like(p) for n, p in alg.gate.named_parameters()}
    bias = next(n for n in gate if n.startswith(GATE_PREFIX + "heads.component.") and n.endswith("bias"))
    gate[bias] = torch.tensor([0.0, 5.0])
    w = alg.posterior(gate, torch.tensor([1.0, 0.0]), torch.randn(4, 8))  # pi_1 underflowed to 0
    assert float(w[:, 1].max()) < 1e-6
    w = alg.posterior(gate, torch.tensor([0.5, 0.5]), torch.randn(4, 8))
    torch.testing.assert_close(w[:, 1], torch.full((4,), math.exp(5) / (1 + math.exp(5))))


def test_server_step_averages_the_gate_by_samples() -> None:
    fed = federation(config({"name": "fedem", "components": 2}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM)
    params = fed.init_state().params
    server = alg.server_init(params, 6, torch.Generator().manual_seed(0))
    gate = server["gate"]
    boxes = {
        0: {"components": {"1": dict(server["components"]["1"])}, "gate": {n: v + 1.0 for n, v in gate.items()}},
        1: {"components": {"1": dict(server["components"]["1"])}, "gate": {n: v + 5.0 for n, v in gate.items()}},
    }
    updates = [ClientUpdate(0, {}, 1, {}), ClientUpdate(1, {}, 3, {})]
    _, new = alg.server_update(ServerContext(params, params, server, updates, boxes, fed.groups, fed.population))
    for n, v in gate.items():
        torch.testing.assert_close(new["gate"][n], v + (1.0 * 1 + 5.0 * 3) / 4)
    assert set(new) == {"components", "gate"}


def test_the_server_checks_the_gate_in_each_outbox() -> None:
    fed = federation(config({"name": "fedem", "components": 2}))
    alg = fed.algorithm
    assert isinstance(alg, FedEM) and alg.gate is not None
    gate_names = {GATE_PREFIX + n for n, _ in alg.gate.named_parameters()}
    assert gate_names <= set(fed.outbox_shapes)
    state = fed.init_state()
    plan = fed.plan(state)
    good = [fed.node.run(plan.payloads[c], fed.data.clients[c], ClientState(), 0, plan.state_payloads[c])[0] for c in plan.cohort]
    updates, dropped = fed.collect(good)
    assert not dropped and all("gate" in u.outbox for u in updates)
    name = sorted(gate_names)[0]
    wrong, _ = fed.up.encode({f"gate/{name}": torch.zeros(7, 7, 7), f"components/1/{next(iter(fed.shapes))}": torch.zeros(1)}, {}, None)
    bad = dataclasses.replace(good[0], outbox=wrong)
    _, dropped = fed.collect([bad])
    assert "shape" in dropped[bad.client_id]


@pytest.mark.parametrize(
    "architecture",
    ["hard_sharing", "shared_encoder", "soft_sharing", "cross_stitch", "mtan", "mmoe", "cgc", "ple", "dselect_k", "ltb", "mtrl", "distillation"],
)
def test_a_gate_builds_for_every_architecture(architecture: str) -> None:
    cfg = config_from_dict(config(model={"name": architecture}))
    gate = build_gate(functools.partial(build_model, cfg.model, (8,)), 3)
    out = gate(torch.randn(5, 8), ["component"])["component"]
    assert out.shape == (5, 3)
    assert gate.tasks["component"] == Task("component", "multiclass", 3)


def test_the_gate_needs_the_model_builder() -> None:
    with pytest.raises(ValueError, match="gate = false"):
        build_gate(None, 2)
