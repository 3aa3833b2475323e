"""One local step per client: a chunk's weighted sum of trained models from one shared reverse pass.

Cross-device cohorts are many clients with one small batch each (W2: 1,000 clients of ~10 rows). When every
client of a chunk takes a single SGD step from the same start, a streamed round needs only
``Σ_c w_c θ_c`` per parameter, never a client's own ``θ_c``. SGD's first step is affine in the gradient
(``θ − lr·(g + λθ)``; its momentum buffer starts at ``g``), so

    Σ_c w_c step(θ, g_c) = W · step(θ, Σ_c w_c g_c / W),    W = Σ_c w_c,

and ``Σ_c w_c g_c`` is one reverse pass of ``Σ_c w_c L_c(θ)`` with ``θ`` shared by every client (``vmap`` over
the clients' rows only): no per-client copy of the parameters, their gradients or the optimiser state, and
the weight gradients are single matrix products over all rows instead of one per client. This is McMahan et
al.'s observation (2017) that FedAvg with one local step is FedSGD, used as an exact identity: the model,
the tasks' losses and the configured SGD (``torch.optim``'s own step, :class:`~fedmtl.fl.functional_optimizer.FunctionalOptimizer`) are the same code the general path runs, and the
result equals its ``Σ_c w_c θ_c`` to rounding (``tests/engine/test_one_step.py``).

It applies (:func:`one_step_applies`) only where the identity is exact: plain ``sgd`` without clipping, every
client one batch, fixed task weights (no balancer, no loss-based scheme), the same start for all, no proximal
term, gradient offset or frozen parameters, no local (personal) parameters, no per-client BatchNorm statistics. Anything else, and any sum
that comes out non-finite, is answered by the general stacked path (:meth:`OneStepResult.general`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedmtl.config.training import ClientConfig
from fedmtl.engine.stacked import (
    CPU,
    Chunk,
    Plan,
    StackedResult,
    StackedTraining,
    TrainRequest,
    client_masks,
    dropout_seed,
    held_sets,
    padded_rows,
    start_value,
    to_device,
    uses_randomness,
)
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.functional_optimizer import FunctionalOptimizer
from fedmtl.mtl import LOCAL, MultiTaskModel
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.tree import TensorTree


def one_step_applies(
    model: MultiTaskModel, cfg: ClientConfig, requests: Sequence[TrainRequest], plans: Sequence[Plan], objectives: Sequence[MultiTaskObjective]
) -> bool:
    """Whether the chunk's weighted sum of trained models is exactly one shared step (see the module)."""
    if cfg.optimizer.name != "sgd" or cfg.max_grad_norm is not None:
        return False
    if any(model.group_of(n) == LOCAL for n, _ in model.named_parameters()):
        return False  # each client keeps its own trained local parameters: they are not a sum
    if not requests or any(len(batches) != 1 for batches, _ in plans):
        return False
    if any(o.fixed_weights is None for o in objectives):
        return False
    first = requests[0].start
    for r in requests:
        if r.prox is not None or r.grad_offset is not None or r.trainable is not None or r.state.local:
            return False
        if r.start.keys() != first.keys() or any(r.start[n] is not first[n] and not torch.equal(r.start[n], first[n]) for n in first):
            return False
    return True


def train_one_step(training: StackedTraining, requests: Sequence[TrainRequest], plans: Sequence[Plan]) -> OneStepResult:
    """The chunk's one step (:func:`one_step_applies` holds), reduced: the clients' objectives at the shared
    start, their losses and objective states; the sums are taken when the round asks for them."""
    model, dev = training.model, training.device
    objectives = [training.objective(tuple(r.client.tasks)) for r in requests]
    ostates = to_device([r.state.objective or o.init() for r, o in zip(requests, objectives)], dev, source=CPU)
    chunk = Chunk.of(model, [r.client for r in requests], objectives, ostates, dev)
    rows = padded_rows(chunk, plans)[0].to(dev)
    rows = rows[:, : int((rows != chunk.padding_row).sum(1).max())]
    named = dict(model.named_parameters())
    leaves = {n: start_value(requests[0], n, named[n]).to(dev).requires_grad_(True) for n in chunk.names}
    buffers = {n: b.detach().to(dev) for n, b in model.named_buffers()}
    model.train()
    generator_state = requests[0].generator.get_state()  # the general path, if asked for, draws the same seed
    seed = dropout_seed([requests[0].generator]) if uses_randomness(model) else None
    loss_mat, penalty = chunk.losses(leaves, buffers, rows, None, seed, shared=True)
    objective = (loss_mat * chunk.fixed_weights.to(loss_mat.dtype)).sum(1)
    if chunk.has_penalty:
        objective = objective + penalty
    chunk.unsettled += chunk.fixed
    trained = client_masks(chunk.names, held_sets(model, requests))

    def general() -> StackedResult:
        requests[0].generator.set_state(generator_state)
        return training.train(requests, plans)

    return OneStepResult(
        chunk.tasks, chunk.held, loss_mat.detach().double().cpu(), to_device(chunk.settle(), CPU, source=training.device), objective, leaves, trained, training.cfg, general
    )


class OneStepResult:
    """A chunk's one-step training, reduced: what a streamed round reads of :class:`~fedmtl.engine.stacked.StackedResult`
    (``tasks``, ``held``, ``loss_mean``, :meth:`weighted_sum`, :meth:`nonfinite_rows`, :meth:`state`) without
    the per-client parameters.

    Args:
        objective: ``[C]`` each client's training objective at the shared start (its weighted task losses plus
            the model's penalty), with its graph to the ``leaves``.
        leaves: the shared start, one leaf per parameter.
        trained: per parameter ``[C]``: 1 where the client trains it (it holds it), 0 where its value stays.
        general: computes the general stacked result of the same chunk (for sums that are not finite).
    """

    def __init__(
        self,
        tasks: list[str],
        held: Tensor,
        loss_mean: Tensor,
        ostates: list[TensorTree],
        objective: Tensor,
        leaves: dict[str, Tensor],
        trained: dict[str, Tensor],
        cfg: ClientConfig,
        general: Callable[[], StackedResult],
    ):
        self.tasks = tasks
        self.held = held
        self.loss_mean = loss_mean
        self.ostates = ostates
        self.steps = [1] * len(ostates)
        self._objective = objective
        self._leaves = leaves
        self._trained = trained
        self._cfg = cfg
        self._general_fn = general
        self._general: StackedResult | None = None
        self._sums: list[tuple[Tensor, dict[str, Tensor | None]]] = []

    def weighted_sum(self, name: str, w: Tensor) -> Tensor:
        """``Σ_c w_c θ_c`` of parameter ``name``, flattened: ``W_t · step(θ, Σ_c w_c g_c / W_t)`` over the clients
        that train it, plus ``θ`` times the weight of those that do not."""
        if self._general is not None:
            return self._general.weighted_sum(name, w)
        leaf = self._leaves[name]
        tr = self._trained[name].to(w.device, w.dtype)
        w_trained = w * tr
        total_t, total_u = float(w_trained.sum()), float((w * (1 - tr)).sum())
        theta = leaf.detach().reshape(-1)
        if total_t == 0:
            return total_u * theta
        g = self._gradient_sum(name, w_trained)
        if not bool(torch.isfinite(g).all()):
            return self.general().weighted_sum(name, w)
        stepped = leaf.detach().clone()
        FunctionalOptimizer(self._cfg.optimizer).step({name: stepped}, {name: (g / total_t).view_as(stepped)})
        return total_t * stepped.detach().reshape(-1) + total_u * theta

    def _gradient_sum(self, name: str, weights: Tensor) -> Tensor:
        """``Σ_c weights_c ∇L_c`` for ``name`` (one reverse pass per distinct weight vector, kept for the others)."""
        weights = weights.to(self._objective.device, self._objective.dtype)
        found = [grads for key, grads in self._sums if torch.equal(key, weights)]
        if found:
            grads = found[0]
        else:
            names = list(self._leaves)
            # the scalar Σ_c w_c L_c, not grad_outputs=w: the same output gradient (1·w_c), without autograd's
            # shape check that imports sympy (half a second, once per process)
            weighted = (self._objective * weights).sum()
            g_all = torch.autograd.grad(weighted, [self._leaves[n] for n in names], retain_graph=True, allow_unused=True)
            grads = dict(zip(names, g_all))
            self._sums.append((weights, grads))
        g = grads[name]
        return (g if g is not None else torch.zeros_like(self._leaves[name])).detach().reshape(-1).cpu()

    def general(self) -> StackedResult:
        """The general stacked result of the same chunk (computed once, on demand)."""
        if self._general is None:
            self._general = self._general_fn()
            self.loss_mean, self.ostates = self._general.loss_mean, self._general.ostates
        return self._general

    def nonfinite_rows(self, name: str) -> Tensor:
        """``[C]`` the clients whose trained ``name`` is not finite: found by the general path."""
        return self.general().nonfinite_rows(name)

    def state(self, model: MultiTaskModel, c: int) -> ClientState:
        """Client ``c``'s next state: its objective's (one step counted); no local parameters or statistics."""
        if self._general is not None:
            return self._general.state(model, c)
        return ClientState(objective=self.ostates[c])


__all__ = ["OneStepResult", "one_step_applies", "train_one_step"]
