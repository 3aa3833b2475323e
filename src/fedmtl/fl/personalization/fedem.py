"""FedEM: each client's data distribution a mixture of K shared component distributions, fitted by federated EM.

Marfoq, Neglia, Bellet, Kameni, Vidal. "Federated Multi-Task Learning under a Mixture of
Distributions", NeurIPS 2021, Algorithm 1.

The model: client t draws each example from component m with probability ``pi_tm``; component m has
a joint distribution ``p_m(x, y) = p_m(x) p_m(y | x)`` shared by every client. The paper adds its
Assumption 2, ``p_m(x) = p(x)`` for every m (the components differ only in how they label inputs),
and the client's predictor becomes ``sum_m pi_tm p_m(y | x)``, with weights that ignore x.

Label skew breaks Assumption 2, since a client's classes shape its inputs. EM then lets the
components split the labels: on the two-digit shards of ``benchmarks/personalization.py`` the two
components took the odd and the even digits. A client holding one digit of each ends with
``pi = (0.5, 0.5)`` and two components each fitted to one of its digits, and their x-blind average
is near chance.

The gate (``gate=True``, the default) drops Assumption 2 and keeps the model. Bayes' rule gives the
same model's exact predictor, ``p_t(y | x) = sum_m w_tm(x) p_m(y | x)`` with
``w_tm(x) = softmax_m(log pi_tm + log p_m(x))``. The gate is a network ``s(x)`` of the experiment's
architecture with one K-class output that stands for ``log p_m(x)`` up to a constant per input: the
client's component posterior is ``softmax_m(log pi_tm + s_m(x))``, the client's own prior entering as
a fixed offset. Each client fits ``s`` in its M-step to the E-step's responsibilities (soft targets,
cross-entropy of that posterior: the M-step of the component given the input), and the server averages
it like a component. The E-step uses the same term,
``q_tm(i) ∝ pi_tm exp(s_m(x_i)) p_m(y_i | x_i)``. A gate constant in x gives back the paper's algorithm
exactly.

Why an offset and not a pooled posterior ``r(m | x)`` divided by the pooled weights ``rho``: the
division blows up on a component no client uses (``rho_m`` near 0 over ``r(m | x)`` that a softmax
never brings to 0), which then takes a client's weight; with the offset such a component keeps the
client's near-0 ``pi_tm``. A client whose ``pi`` sits on one component teaches the gate nothing (its
posterior is that component whatever ``s``), which is right: it needs no gate.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.func import functional_call

from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import FedAvg, Mixture, ModelBuilder, ServerContext
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.personalization._common import LocalObjective, average_members, client_loss, shuffled
from fedmtl.mtl import MultiTaskModel
from fedmtl.registry import register
from fedmtl.tasks import Task
from fedmtl.tree import TensorTree

#: the gate's one output: which component an input came from
GATE_TASK = "component"
#: the gate's parameter names in states and outboxes (kept apart from the model's own names)
GATE_PREFIX = "fedem_gate."


def e_step(losses: Tensor, pi: Tensor, log_ratio: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Responsibilities ``q[k, i] ∝ pi_k (p_k(x_i) / p(x_i)) exp(-loss_k(i))`` and the new mixture weights ``pi = mean_i q``.

    Args:
        losses: ``[K, n]`` per-sample losses (negative log-likelihoods of y given x) of each component.
        pi: ``[K]`` current mixture weights.
        log_ratio: ``[K, n]`` ``log p_k(x_i) / p(x_i)``, up to a constant per sample (the gate's);
            ``None``: Assumption 2, every component has the same input distribution.
    """
    logits = pi.clamp_min(1e-12).log()[:, None] - losses
    if log_ratio is not None:
        logits = logits + log_ratio
    q = torch.softmax(logits, dim=0)
    return q, q.mean(dim=1)


def build_gate(make_model: ModelBuilder | None, components: int) -> MultiTaskModel:
    """The gate network: the experiment's architecture with one K-class output.

    Built under a fixed seed, so every process holds the same module; its trained values travel in the
    algorithm's state, and :meth:`FedEM.server_init` draws the initial ones from the run's generator.
    """
    if make_model is None:
        raise ValueError(
            "FedEM's gate is a network of the experiment's architecture: build the algorithm with "
            "build_algorithm(cfg, make_model), or set algorithm.gate = false for the paper's x-independent mixture"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return make_model([Task(GATE_TASK, "multiclass", components)])


class FedEM(FedAvg):
    """K components: component 0 is the global model (aggregated as usual), components 1..K-1 live in
    the server state and are averaged among the cohort. Per round a client runs the E-step on its
    training data (responsibilities, its weights ``pi``), then the M-step: ``client.epochs`` epochs of
    SGD on each component with per-sample losses weighted by the responsibilities, balanced across
    the client's tasks by its configured multi-task objective (``mtl``; one objective state per component).
    The E-step's likelihoods are the plain sums of the task losses.

    With a gate (see the module docstring) the E-step also weighs each input by the gate's density
    ratio, the M-step also fits the gate to the responsibilities with the same epochs, batches and
    learning rate, and the mixture weights depend on the input.

    The personal model is the mixture of the client's last trained components (and gate).
    Components 1..K-1 and the gate travel through the codecs both ways (counted in ``bytes_down`` /
    ``bytes_up``).

    Args:
        components: number of components K (>= 2).
        gate: the gate network (:func:`build_gate`); ``None``: Marfoq et al.'s x-independent mixture.
    """

    name = "fedem"

    def __init__(self, components: int, gate: MultiTaskModel | None = None):
        if components < 2:
            raise ValueError(f"FedEM needs components >= 2, got {components}")
        self.k = components
        self.gate = gate
        if gate is not None:
            gate.eval()  # no dropout, norm layers at their initial statistics: the gate is a pure function of its parameters

    # -- the gate -------------------------------------------------------------------------------
    def gate_scores(self, gate: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """``[K, n]`` ``s_m(x) = log p_m(x)`` up to a constant per input, from gate parameters ``gate`` (prefixed names)."""
        assert self.gate is not None
        params = {n[len(GATE_PREFIX) :]: v for n, v in gate.items()}
        scores: Tensor = functional_call(self.gate, params, (x, [GATE_TASK]))[GATE_TASK].T
        return scores

    def log_posterior(self, gate: Mapping[str, Tensor], pi: Tensor, x: Tensor) -> Tensor:
        """``[n, K]`` a client's ``log p_t(m | x) = log_softmax_m(log pi_m + s_m(x))``."""
        return torch.log_softmax(_weights(pi).log()[:, None] + self.gate_scores(gate, x), dim=0).T

    def posterior(self, gate: Mapping[str, Tensor], pi: Tensor, x: Tensor) -> Tensor:
        """``[n, K]`` a client's ``p_t(m | x)``: its mixture weights per input."""
        return self.log_posterior(gate, pi, x).exp()

    def fit_gate(self, gate: Mapping[str, Tensor], pi: Tensor, x: Tensor, q: Tensor, plan: list[list[Tensor]], lr: float) -> dict[str, Tensor]:
        """The gate after SGD on the cross-entropy of the client's posterior (prior ``pi``) to the
        responsibilities ``q`` (``[K, n]``) over ``plan``'s batches."""
        params = {n: v.detach() for n, v in gate.items()}
        pi = pi.detach()
        for batches in plan:
            for idx in batches:
                leaves = {n: v.requires_grad_() for n, v in params.items()}
                loss = -(q[:, idx].T * self.log_posterior(leaves, pi, x[idx])).sum(-1).mean()
                grads = torch.autograd.grad(loss, list(leaves.values()))
                params = {n: (v - lr * g).detach() for (n, v), g in zip(leaves.items(), grads)}
        return params

    def outbox_shapes(self) -> dict[str, torch.Size]:
        if self.gate is None:
            return {}
        return {GATE_PREFIX + n: p.shape for n, p in self.gate.named_parameters()}

    # -- the rounds -----------------------------------------------------------------------------
    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        state: TensorTree = {"components": {str(k): shuffled(params, generator) for k in range(1, self.k)}}
        if self.gate is not None:
            state["gate"] = shuffled({GATE_PREFIX + n: p.detach() for n, p in self.gate.named_parameters()}, generator)
        return state

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        model, cfg = trainer.model, trainer.cfg
        names = held_parameter_names(model, client.tasks)
        tasks = list(client.tasks)
        server = state.server
        own = state.algorithm
        served = server["components"]
        comps = [{n: start[n].detach().clone() for n in names}] + [{n: served[str(k)][n].clone() for n in names} for k in range(1, self.k)]
        pi = own["fedem_pi"] if "fedem_pi" in own else torch.full((self.k,), 1.0 / self.k)
        gate, log_ratio = None, None
        with torch.no_grad():
            losses = torch.stack([client_loss(model, c, client.train, tasks, per_sample=True) for c in comps])
            if self.gate is not None:
                gate = dict(server["gate"])
                log_ratio = self.gate_scores(gate, client.train.x)
        q, pi = e_step(losses, pi, log_ratio)
        lr = cfg.optimizer.lr
        plan = batch_plan(len(client.train), cfg.batch_size, cfg.epochs, generator)
        saved = own.get("fedem_objective", {})
        objectives = [LocalObjective(trainer, client, saved.get(str(k))) for k in range(self.k)]
        total, steps = torch.zeros(()), 0
        for k in range(self.k):
            for epoch, batches in enumerate(plan):
                for idx in batches:
                    grads, loss = objectives[k].grads(comps[k], idx, generator, epoch, weights=q[k, idx])
                    comps[k] = {n: comps[k][n] - lr * grads[n] for n in names}
                    total += loss
                    steps += 1
        outbox: TensorTree = {"components": {str(k): comps[k] for k in range(1, self.k)}}
        new_state: TensorTree = {
            "fedem_pi": pi,
            "fedem_objective": {str(k): o.state for k, o in enumerate(objectives)},
            "fedem_components": {str(k): c for k, c in enumerate(comps)},
        }
        if gate is not None:
            gate = self.fit_gate(gate, pi, client.train.x, q, plan, lr)
            new_state["fedem_gate"] = gate
            outbox["gate"] = gate
        metrics = {"loss/fedem": float(total) / max(steps, 1), "steps": float(steps)}
        return LocalResult(comps[0], metrics, ClientState().with_algorithm(new_state), outbox)

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        members = [(u, ctx.outboxes[u.client_id]) for u in ctx.updates if u.client_id in ctx.outboxes]
        comps = ctx.state["components"]
        out = {key: average_members(cmodel, [(u, box["components"][key]) for u, box in members], ctx.groups) for key, cmodel in comps.items()}
        new: TensorTree = {"components": out}
        if self.gate is not None:
            gate = ctx.state["gate"]
            new["gate"] = average_members(gate, [(u, box["gate"]) for u, box in members], {"gate": list(gate)})
        return dict(ctx.after), new

    def personal_mixture(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> Mixture | None:
        own = state.algorithm
        if "fedem_components" not in own:
            return None
        pi: Tensor = own["fedem_pi"]
        comps = [{**global_params, **own["fedem_components"][str(k)]} for k in range(self.k)]
        if self.gate is None or "fedem_gate" not in own:
            return Mixture(comps, lambda x: pi.expand(len(x), -1))
        gate = own["fedem_gate"]
        return Mixture(comps, lambda x: self.posterior(gate, pi, x))


def _weights(w: Tensor) -> Tensor:
    """Mixture weights made safe to take the log of: clamped away from 0 (a component the client never
    uses underflows to exactly 0) and renormalised."""
    w = w.clamp_min(1e-12)
    return w / w.sum()


register(
    "algorithm",
    "fedem",
    lambda cfg, make_model: FedEM(cfg.components, build_gate(make_model, cfg.components) if cfg.gate else None),
    acfg.FedEMAlgorithm,
)
