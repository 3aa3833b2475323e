"""Many clients' local training as one computation: the model's parameters stacked along a client dimension.

The general vectorised engine's core. ``torch.func.functional_call`` runs the model's own ``forward`` (and
its ``penalty``) with one client's parameters and buffers; ``torch.func.vmap`` runs it for every client of a
chunk at once; ordinary autograd differentiates through it. Nothing here knows a layer, a loss or an
optimiser: the model's modules, the tasks' own losses, the objective's scheme and balancer and
``torch.optim``'s SGD / Adam do the maths, so any model of vmappable operations trains here exactly as
:meth:`fedmtl.fl.client.LocalTrainer.train` trains it one client at a time:

* the same batches: each client's :func:`~fedmtl.fl.batching.batch_plan` is drawn from its own generator,
  in the same order; steps are padded to the longest client, and a padded step leaves the client's
  parameters *and* optimiser state untouched; a partial batch averages over its real rows only;
* the same objective: per client and step the objective's :meth:`~fedmtl.mtl.MultiTaskObjective.plan`
  (scheme, loss-based balancer) or, for gradient balancers, :meth:`~fedmtl.mtl.MultiTaskObjective.balance`
  on that client's per-task gradients of the shared parameters (one reverse pass per task for the chunk);
* the same step: the proximal pull (FedProx, Ditto, MOCHA), clipping per client, SCAFFOLD's offset,
  ``trainable`` subsets (FedRep's phases), per-client BatchNorm statistics, dropout drawn independently
  per client (``vmap(randomness="different")``, seeded from the clients' generators).

Under ``privacy.dp_sgd`` every request runs :meth:`StackedTraining.train_private`: the one-client DP-SGD
trainer's per-example gradients under a second ``vmap`` (over clients), with its lots, clipping and noise.

A parameter a client does not train (a head of a task it lacks, a frozen phase) is masked: its gradient
is zero, which leaves it where it is unless weight decay moves it; then its value and optimiser state are
restored after the step (:func:`masking_suffices`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fedmtl.config.privacy import DPSGDConfig
from fedmtl.config.training import SGD, Adam
from fedmtl.data.dataset import ClientData
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client import (
    LocalResult,
    TrainRequest,
    client_buffers,
    held_parameter_names,
    norm_buffer_names,
)
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.dp_sgd_client import (
    HISTORY_KEY,
    example_gradients,
    prior_accountant,
    refuse_changed_steps,
    refuse_unprivatisable,
)
from fedmtl.fl.functional_optimizer import FunctionalOptimizer
from fedmtl.mtl import LOCAL, SHARED, MultiTaskModel, build_objective
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.privacy.dp.dpsgd import DPSGDSchedule, clip_and_noise, dp_batches
from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class GradRequest:
    """The arguments of one :meth:`fedmtl.fl.client.LocalTrainer.grads` call."""

    params: Mapping[str, Tensor]
    client: ClientData
    idx: Tensor
    objective: MultiTaskObjective
    ostate: TensorTree
    generator: torch.Generator
    epoch: int = 0
    weights: Tensor | None = None


class _Step(nn.Module):
    """The model's predictions for ``tasks`` and its penalty, as one module ``functional_call`` can run."""

    def __init__(self, model: MultiTaskModel, tasks: Sequence[str]):
        super().__init__()
        self.model = model
        self.tasks = list(tasks)

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        preds = self.model(x, self.tasks)
        penalty = self.model.penalty()
        return preds, (penalty if penalty is not None else x.new_zeros(()))


@dataclass
class Chunk:
    """A chunk of clients laid out for one batched computation: data, per-task targets, masks, stacked state."""

    model: MultiTaskModel
    clients: list[ClientData]
    tasks: list[str]  # the union of the clients' tasks, in the model's order
    held: Tensor  # [C, T]: 1 where the client holds the task
    names: list[str]  # every parameter of the model, in named_parameters() order
    shared: list[bool]  # per name: in the shared group (the coordinates gradient balancers see)
    x: Tensor  # the clients' rows concatenated, plus one zero row (padding)
    y: dict[str, Tensor]  # per task, the same rows' targets (zeros where a client lacks the task)
    offsets: list[int]  # where each client's rows start in x
    objectives: list[MultiTaskObjective]
    ostates: list[TensorTree]
    has_penalty: bool = False
    step_module: _Step = field(init=False)
    #: the names in the shared group
    shared_names: set[str] = field(init=False)
    #: ``[C, T]`` the task weights of the clients whose objective's weights never change (zeros for the others)
    fixed_weights: Tensor = field(init=False)
    #: the clients whose objective decides its weights step by step (loss-based schemes, gradient balancers)
    planned: list[int] = field(init=False)
    #: ``[C]`` 1 for the fixed-weight clients
    fixed: Tensor = field(init=False)
    #: ``[C]`` steps the fixed-weight clients took that their objective states do not count yet (:meth:`settle`)
    unsettled: Tensor = field(init=False)
    #: per client, the columns of its objective's tasks (in the objective's order)
    task_cols: list[list[int]] = field(init=False)
    #: ``[C, K]`` the same columns padded to the most tasks a client holds (``K``), and where they are real
    col_index: Tensor = field(init=False)
    col_valid: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.step_module = _Step(self.model, self.tasks)
        self.shared_names = {n for n, s in zip(self.names, self.shared) if s}
        col = {t: i for i, t in enumerate(self.tasks)}
        # one row per distinct objective (a chunk has few task sets, many clients), picked per client
        distinct: dict[int, int] = {}
        rows: list[Tensor] = []
        for obj in self.objectives:
            if id(obj) not in distinct:
                distinct[id(obj)] = len(rows)
                row = torch.zeros(len(self.tasks))
                if obj.fixed_weights is not None:
                    row[[col[t] for t in obj.tasks]] = torch.tensor(obj.fixed_weights)
                rows.append(row)
        pick = torch.tensor([distinct[id(obj)] for obj in self.objectives], dtype=torch.long)
        self.fixed_weights = torch.stack(rows).index_select(0, pick).to(self.held.device) if rows else torch.zeros(0, len(self.tasks), device=self.held.device)
        self.planned = [c for c, obj in enumerate(self.objectives) if obj.fixed_weights is None]
        self.fixed = torch.tensor([int(obj.fixed_weights is not None) for obj in self.objectives])
        self.unsettled = torch.zeros(len(self.objectives), dtype=torch.long)
        self.task_cols = [[col[t] for t in obj.tasks] for obj in self.objectives]
        K = max((len(c) for c in self.task_cols), default=0)
        self.col_index = torch.tensor([c + [0] * (K - len(c)) for c in self.task_cols], dtype=torch.long, device=self.held.device).reshape(len(self.task_cols), K)
        self.col_valid = torch.tensor([[k < len(c) for k in range(K)] for c in self.task_cols], dtype=torch.bool, device=self.held.device).reshape(len(self.task_cols), K)

    def settle(self) -> list[TensorTree]:
        """The objective states with every step taken so far counted (fixed-weight clients skip the per-step
        :meth:`~fedmtl.mtl.objective.MultiTaskObjective.plan` call: their weights and state never change
        but for the step counter, which is advanced here in one go, as the sequential hot path advances it)."""
        for c, n in enumerate(self.unsettled.tolist()):
            if n:
                state = self.ostates[c]
                self.ostates[c] = {**state, "step": state["step"] + n}
        self.unsettled.zero_()
        return self.ostates

    @classmethod
    def of(
        cls,
        model: MultiTaskModel,
        clients: Sequence[ClientData],
        objectives: Sequence[MultiTaskObjective],
        ostates: Sequence[TensorTree],
        device: torch.device | None = None,
    ) -> Chunk:
        tasks = [t for t in model.task_names if any(t in c.tasks for c in clients)]
        held = torch.tensor([[float(t in c.tasks) for t in tasks] for c in clients])
        names = [n for n, _ in model.named_parameters()]
        shared = [model.group_of(n) == SHARED for n in names]
        first = clients[0].train.x
        x = torch.cat([c.train.x for c in clients] + [first.new_zeros((1, *first.shape[1:]))])
        y = {}
        for t in tasks:
            dt = model.tasks[t].target_dtype()
            ref = next(c.train.y[t] for c in clients if t in c.tasks)
            parts = [c.train.y[t].to(dt) if t in c.tasks else torch.zeros((len(c.train), *ref.shape[1:]), dtype=dt) for c in clients]
            y[t] = torch.cat(parts + [torch.zeros((1, *ref.shape[1:]), dtype=dt)])
        offsets, total = [], 0
        for c in clients:
            offsets.append(total)
            total += len(c.train)
        dev = device or torch.device("cpu")
        chunk = cls(model, list(clients), tasks, held.to(dev), names, shared, x.to(dev), {t: v.to(dev) for t, v in y.items()}, offsets, list(objectives), list(ostates))
        chunk.has_penalty = _has_penalty(model)
        return chunk

    @property
    def padding_row(self) -> int:
        return int(self.x.shape[0]) - 1

    def buffers(self, states: Sequence[ClientState]) -> dict[str, Tensor]:
        """Stacked buffers: each client's own BatchNorm statistics, every other buffer shared."""
        model = self.model
        own = set(norm_buffer_names(model))
        out = {}
        per_client = [client_buffers(model, s) for s in states] if own else []
        for n, b in model.named_buffers():
            if n in own:
                out[n] = torch.stack([pc[n] for pc in per_client]).clone()
            else:
                out[n] = b.detach().unsqueeze(0).expand(len(states), *b.shape).clone()
        return {n: b.to(self.x.device) for n, b in out.items()}

    def losses(
        self, params: Mapping[str, Tensor], buffers: dict[str, Tensor], rows: Tensor, weights: Tensor | None, seed: int | None, shared: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Per-client task losses ``[C, T]`` (mean over each client's real rows) and penalties ``[C]``.

        ``rows [C, B]`` index :attr:`x`; rows equal to :attr:`padding_row` are padding. ``weights [C, B]``
        optionally weigh each row's loss (FedEM's responsibilities; the mean then runs over real rows).
        ``shared``: ``params`` and ``buffers`` are one value every client uses (no leading client dimension).
        """
        model, tasks = self.model, self.tasks
        real = (rows != self.padding_row).to(self.x.dtype if self.x.is_floating_point() else torch.float32)
        row_w = real if weights is None else real * weights
        step_module = self.step_module

        def forward(p: dict[str, Tensor], b: dict[str, Tensor], xc: Tensor) -> tuple[dict[str, Tensor], Tensor]:
            out: tuple[dict[str, Tensor], Tensor] = functional_call(step_module, ({f"model.{k}": v for k, v in p.items()}, {f"model.{k}": v for k, v in b.items()}), (xc,))
            return out

        # Only the model runs under vmap. Each row's loss is independent of the others', so the tasks' losses
        # run once over all the chunk's rows, outside vmap: cross-entropy has no batching rule, and vmap would
        # run its Python decomposition at every step.
        batched = vmap(forward, in_dims=(None, None, 0) if shared else 0, randomness="different")
        x = self.x[rows]
        if seed is None:
            preds, penalty = batched(dict(params), buffers, x)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                preds, penalty = batched(dict(params), buffers, x)
        C, B = rows.shape
        out = []
        for t in tasks:  # the mean over each client's real rows that carry this task's label
            task = model.tasks[t]
            y = self.y[t][rows].flatten(0, 1)
            n = (task.labelled(y).view(C, B).to(real.dtype) * real).sum(1).clamp(min=1.0)
            out.append((task.loss(preds[t].flatten(0, 1), y, reduction="none").view(C, B) * row_w).sum(1) / n)
        return torch.stack(out, 1), penalty

    def _active_losses(
        self, leaves: dict[str, Tensor], buffers: dict[str, Tensor], rows: Tensor, active: Tensor, weights: Tensor | None, seed: int | None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`losses` computed for the ``active`` clients only (zeros for the others).

        With skewed client sizes, late steps of a chunk have few clients left: computing the rest only to mask
        it would cost as much as a full step. BatchNorm statistics the forward pass updates are written back.
        """
        on = active.nonzero().flatten()
        C = int(active.shape[0])
        if len(on) == C:
            return self.losses(leaves, buffers, rows, weights, seed)
        live_buffers = {n: b.index_select(0, on) for n, b in buffers.items()}
        live_losses, live_penalty = self.losses(
            {n: v.index_select(0, on) for n, v in leaves.items()}, live_buffers, rows.index_select(0, on),
            weights.index_select(0, on) if weights is not None else None, seed,
        )
        with torch.no_grad():
            for n, b in buffers.items():
                b.index_copy_(0, on, live_buffers[n])
        loss_mat = live_losses.new_zeros((C, *live_losses.shape[1:])).index_copy(0, on, live_losses)
        penalty = live_penalty.new_zeros((C, *live_penalty.shape[1:])).index_copy(0, on, live_penalty)
        return loss_mat, penalty

    def gradients(
        self,
        leaves: dict[str, Tensor],
        buffers: dict[str, Tensor],
        rows: Tensor,
        generators: Sequence[torch.Generator],
        epochs: Sequence[int],
        weights: Tensor | None = None,
        seed: int | None = None,
    ) -> tuple[dict[str, Tensor | None], Tensor]:
        """One step's gradients of every client's balanced objective, and its task losses ``[C, T]``.

        ``leaves`` hold the chunk's first ``C`` clients, every one of them stepping (training runs longest plan
        first, so the clients still stepping are a prefix). Advances their objective states (as the sequential
        objective's backward does).
        """
        loss_mat, penalty = self.losses(leaves, buffers, rows, weights, seed)
        detached = loss_mat.detach()
        C, T = detached.shape
        W = self.fixed_weights[:C].to(detached.dtype)
        self.unsettled[:C] += self.fixed[:C]
        balanced: list[int] = []
        can_balance = any(self.shared)
        for c in self.planned:
            if c >= C:
                break
            obj = self.objectives[c]
            if obj.always_balanced and can_balance:  # plan would only count the step
                state = self.ostates[c]
                self.ostates[c] = {**state, "step": state["step"] + 1}
                balanced.append(c)
                continue
            cols = self.task_cols[c]
            w, self.ostates[c] = obj.plan(detached[c, cols], self.ostates[c], generators[c], epochs[c])
            if w is None and not can_balance:  # nothing to balance: the plain sum, the balancer untouched
                w = torch.ones(len(cols))
            if w is None:
                balanced.append(c)
            else:
                W[c, cols] = w.to(W)
        names = list(leaves)
        if not balanced:
            total = (loss_mat * W).sum() + (penalty.sum() if self.has_penalty else 0.0)
            return dict(zip(names, torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True))), detached
        # gradient balancers: every client's per-task gradients, laid out [C, K, P] over the shared parameters
        # (the rows the sequential objective's Jacobian has; K the most tasks a client holds): K reverse passes,
        # pass k with output gradients that pick each client's k-th own task, for every parameter at once, so
        # the weighted gradient of the other parameters is a combination of the same rows. With
        # task-heterogeneous clients K < T: the tasks a client lacks cost no reverse pass. (One pass batched
        # over K with is_grads_batched was about 10 % slower on CPU, W4: vmap's batching rules copy the
        # batched weight gradients.)
        all_leaves = [leaves[n] for n in names]
        index, valid = self.col_index[:C], self.col_valid[:C]
        K = int(valid.sum(1).max())
        index, valid = index[:, :K], valid[:, :K]
        selector = loss_mat.new_zeros((C, K, T)).scatter_(2, index.unsqueeze(-1), valid.unsqueeze(-1).to(loss_mat.dtype)).transpose(0, 1)
        passes = [
            torch.autograd.grad(loss_mat, all_leaves, grad_outputs=selector[k], retain_graph=self.has_penalty or k + 1 < K, allow_unused=True) for k in range(K)
        ]
        shared_at = [i for i, n in enumerate(names) if n in self.shared_names]
        sizes = [all_leaves[i][0].numel() for i in shared_at]
        starts = dict(zip(shared_at, [sum(sizes[:j]) for j in range(len(sizes))]))
        # every client's rows [C, K, P] over the shared coordinates, written once, straight into float64 (the
        # precision the balancers compute Gramians in), and every balanced client's Gramian in one batched product;
        # each client's own balancer then decides on its own tasks' rows
        rows_64 = loss_mat.new_empty((C, K, sum(sizes)), dtype=torch.float64)
        for k in range(K):
            for i, size in zip(shared_at, sizes):
                piece = rows_64[:, k, starts[i] : starts[i] + size]
                g = passes[k][i]
                piece.zero_() if g is None else piece.view_as(g).copy_(g)
        every = len(balanced) == C
        grams = rows_64 @ rows_64.transpose(1, 2)
        if not every:
            grams = grams.index_select(0, torch.tensor(balanced, device=grams.device))
        # [C, K] the balanced clients' combinations of their own rows (the shared coordinates' gradient)
        combine = W.new_zeros((C, K))
        given: dict[int, Tensor] = {}
        # balancers that answer many clients at once (PCGrad): one call per kind of balancer and task count,
        # whatever the clients' task sets
        together: dict[tuple[object, int], list[int]] = {}
        for i, c in enumerate(balanced):
            key = self.objectives[c].batch_balancer_key()
            if key is not None:
                together.setdefault((key, len(self.task_cols[c])), []).append(i)
        for (_, k), members in together.items():
            cs = [balanced[i] for i in members]
            shared, states = self.objectives[cs[0]].balance_batch(grams[members, :k, :k], [self.ostates[c] for c in cs], [generators[c] for c in cs])
            combine[cs, :k] = shared.to(combine)
            for c, state in zip(cs, states):
                W[c, self.task_cols[c]] = 1.0
                self.ostates[c] = state
        in_batch = {i for members in together.values() for i in members}
        for i, c in enumerate(balanced):
            if i in in_batch:
                continue
            obj = self.objectives[c]
            cols = self.task_cols[c]
            k = len(cols)
            G = rows_64[c, :k].to(loss_mat.dtype)
            balance, self.ostates[c] = obj.balance(detached[c, cols], G, self.ostates[c], generators[c], epochs[c], gram=grams[i, :k, :k])
            W[c, cols] = balance.weights.to(W)
            if balance.shared_direction is not None:
                given[c] = balance.shared_direction.to(G)
            else:
                combine[c, :k] = (balance.shared_weights if balance.shared_weights is not None else balance.weights).to(combine)
        # every client's weights in its own tasks' order (a client's weights are zero outside its tasks)
        W_own = (W.gather(1, index) * valid.to(W.dtype)).t()
        # the penalty's gradient is added to every client's step (to the balanced direction too), as in the sequential step
        pen = torch.autograd.grad(penalty.sum(), all_leaves, allow_unused=True) if self.has_penalty else (None,) * len(names)
        chosen = torch.zeros(C, dtype=torch.bool, device=W.device)
        chosen[balanced] = True
        grads: dict[str, Tensor | None] = {}
        for i, (n, pn) in enumerate(zip(names, pen)):
            x = leaves[n]
            task_rows = [p[i] for p in passes]
            if i in starts:  # the balanced direction (the weighted rows for clients whose balancer weighs losses)
                d = _weighted_rows(task_rows, combine.t())
                if d is None:
                    d = torch.zeros_like(x)
                for c, direction in given.items():
                    d[c] = direction[starts[i] : starts[i] + x[0].numel()].view_as(x[c])
                if not every:
                    other = _weighted_rows(task_rows, W_own)
                    d = torch.where(_bcast(chosen, x), d, other if other is not None else torch.zeros_like(x))
            else:
                d = _weighted_rows(task_rows, W_own)
            grads[n] = d + pn if d is not None and pn is not None else (d if d is not None else pn)
        return grads, detached


Plan = tuple[list[Tensor], list[int]]  # a client's batches (its own row indices) and each batch's epoch


def draw_plan(req: TrainRequest, batch_size: int, epochs: int, skip_single: bool) -> Plan:
    """A client's batches, drawn from its generator as :meth:`LocalTrainer.train` draws them; batches of one
    row are skipped when the model has BatchNorm (as the sequential trainer skips them)."""
    batches, eps = [], []
    for e, bs in enumerate(batch_plan(len(req.client.train), batch_size, req.epochs or epochs, req.generator)):
        for idx in bs:
            if skip_single and len(idx) < 2:
                continue
            batches.append(idx)
            eps.append(e)
    return batches, eps


def padded_rows(chunk: Chunk, plans: Sequence[Plan]) -> Tensor:
    """The plans as padded rows of :attr:`Chunk.x`, ``[S, C, B]`` (padding: :attr:`Chunk.padding_row`)."""
    S = max((len(b) for b, _ in plans), default=0)
    B = max(1, max((len(i) for b, _ in plans for i in b), default=1))  # at least one (padding) column
    C = len(plans)
    rows = torch.full((S, C, B), chunk.padding_row, dtype=torch.long)
    # every batch written by one indexed assignment: batch (s, c)'s rows go to rows[s, c, :len], shifted by the
    # client's offset in x (thousands of clients: one operation, not one per batch)
    batches = [idx for b, _ in plans for idx in b]
    if not batches:
        return rows
    lens = torch.tensor([len(idx) for idx in batches])
    starts = torch.tensor([(s * C + c) * B for c, (b, _) in enumerate(plans) for s in range(len(b))])
    shifts = torch.tensor([off for (b, _), off in zip(plans, chunk.offsets) for _ in b])
    first = torch.cumsum(lens, 0) - lens  # where each batch starts in the concatenation
    within = torch.arange(int(lens.sum())) - first.repeat_interleave(lens)
    rows.view(-1)[starts.repeat_interleave(lens) + within] = torch.cat(batches).long() + shifts.repeat_interleave(lens)
    return rows


def batch_key(model: MultiTaskModel, tasks: Sequence[str], batch_sizes: Sequence[int], norm: bool | None = None) -> tuple[object, ...]:
    """Which clients may share a batched computation: any, for models whose rows do not interact; with the
    same batch size step by step under BatchNorm (a padded row would enter the batch statistics); with the
    same tasks too when the model's penalty reads its last forward pass (distillation: padded rows and other
    clients' tasks would enter it). ``norm``: :func:`has_norm_statistics` of the model, when the caller
    has it (it walks the modules: a cost per client otherwise)."""
    forward_penalty = getattr(model, "penalty_reads_forward", False)
    key: tuple[object, ...] = ()
    if forward_penalty or (has_norm_statistics(model) if norm is None else norm):
        key += (tuple(batch_sizes),)
    if forward_penalty:
        key += (tuple(tasks),)
    return key


def _groups(keys: Sequence[object]) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


_T = TypeVar("_T")


def _per_group(keys: Sequence[object], run: Callable[[list[int]], Sequence[_T]]) -> list[_T]:
    """``run`` on each group of equal keys (:func:`_groups`), its results put back in the items' order."""
    out: list[_T | None] = [None] * len(keys)
    for members in _groups(keys):
        for i, res in zip(members, run(members)):
            out[i] = res
    return out  # type: ignore[return-value]


def held_sets(model: MultiTaskModel, requests: Sequence[TrainRequest]) -> list[set[str]]:
    """Each request's held parameter names, computed once per task set (a chunk has few task sets, many clients)."""
    by_tasks: dict[tuple[str, ...], set[str]] = {}
    for r in requests:
        tasks = tuple(r.client.tasks)
        if tasks not in by_tasks:
            by_tasks[tasks] = set(held_parameter_names(model, tasks))
    return [by_tasks[tuple(r.client.tasks)] for r in requests]


def client_masks(names: Sequence[str], members: Sequence[set[str]], device: torch.device | None = None) -> dict[str, Tensor]:
    """Per parameter ``[C]``: 1 where the parameter is in the client's set (held, trained), else 0."""
    return {n: torch.tensor([float(n in m) for m in members], device=device) for n in names}


def has_norm_statistics(model: nn.Module) -> bool:
    """Whether the model normalises with batch statistics (BatchNorm): padded rows would enter them."""
    return bool(norm_buffer_names(model))


def dropout_seed(generators: Sequence[torch.Generator]) -> int:
    """One seed for the chunk's dropout masks, drawn from the first client's generator (randomness is passed in)."""
    return int(torch.randint(0, 2**62, (1,), generator=generators[0]))


def uses_randomness(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


class StackedTraining:
    """Trains a chunk of :class:`TrainRequest` s as one computation and returns their results.

    Args:
        model: the model (its modules run through ``functional_call``; its own parameters are not changed).
        client_cfg: the client config (optimiser, batch size, epochs, clipping).
        mtl_cfg: the multi-task objective's config.
    """

    def __init__(self, model: MultiTaskModel, client_cfg, mtl_cfg, device: torch.device | None = None, dp_sgd: DPSGDConfig | None = None):  # type: ignore[no-untyped-def]
        self.device = device or torch.device("cpu")
        #: sample-level DP-SGD: when set, every training request runs :meth:`train_private`
        self.dp_sgd = dp_sgd
        # the module structure that functional_call runs: a copy on the device (its own values are never used)
        self.model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)
        self.cfg = client_cfg
        self.mtl_cfg = mtl_cfg
        self._objectives: dict[tuple[str, ...], MultiTaskObjective] = {}

    def objective(self, tasks: tuple[str, ...]) -> MultiTaskObjective:
        if tasks not in self._objectives:
            self._objectives[tasks] = build_objective(self.mtl_cfg, tasks)
        return self._objectives[tasks]

    def train_results(self, requests: Sequence[TrainRequest]) -> list[LocalResult]:
        """Every request's :class:`LocalResult`, batched with the requests it can share a computation with
        (:func:`batch_key`)."""
        norm = has_norm_statistics(self.model)
        if self.dp_sgd is not None:
            return _per_group([batch_key(self.model, r.client.tasks, [], norm) for r in requests], lambda members: self.train_private([requests[i] for i in members]))
        plans = [draw_plan(r, self.cfg.batch_size, self.cfg.epochs, norm) for r in requests]
        keys = [batch_key(self.model, r.client.tasks, [len(b) for b in p[0]], norm) for r, p in zip(requests, plans)]
        return _per_group(keys, lambda members: self.train([requests[i] for i in members], [plans[i] for i in members]).unstack(self.model))

    def train(self, requests: Sequence[TrainRequest], plans: Sequence[Plan] | None = None) -> StackedResult:
        """Train the requests as one chunk (``plans``: their batch plans when already drawn); the caller makes
        sure they may share one computation (:func:`batch_key`, as :meth:`train_results` does).

        The clients are trained longest plan first: the clients still stepping at step ``s`` are then a prefix
        of the chunk, so a step computes on (and the optimiser updates) views of the first ``k`` rows, and a
        client whose batches ran out costs nothing more, with no masking, copying or restoring of its rows.
        The result comes back in the requests' order.
        """
        if plans is None:
            skip_single = has_norm_statistics(self.model)
            plans = [draw_plan(r, self.cfg.batch_size, self.cfg.epochs, skip_single) for r in requests]
        order = sorted(range(len(requests)), key=lambda c: -len(plans[c][0]))  # stable: ties keep their order
        seed_generator = requests[0].generator  # dropout's seeds come from the first request's generator, in any order
        if order == list(range(len(requests))):
            return self._train_longest_first(requests, plans, seed_generator)
        result = self._train_longest_first([requests[c] for c in order], [plans[c] for c in order], seed_generator)
        return result.reordered(order, requests)

    def _train_longest_first(self, requests: Sequence[TrainRequest], plans: Sequence[Plan], seed_generator: torch.Generator) -> StackedResult:
        """:meth:`train` for requests sorted by their number of steps, longest first."""
        model, cfg = self.model, self.cfg
        C = len(requests)
        objectives = [self.objective(tuple(r.client.tasks)) for r in requests]
        ostates = to_device([r.state.objective or o.init() for r, o in zip(requests, objectives)], self.device, source=CPU)
        chunk = Chunk.of(model, [r.client for r in requests], objectives, ostates, self.device)
        rows = padded_rows(chunk, plans)
        step_epochs = [e for _, e in plans]
        S = rows.shape[0]
        named = dict(model.named_parameters())
        names = chunk.names
        # trained (held, trainable) mask per client and parameter; the start values
        stepped = [h if r.trainable is None else h & set(r.trainable) for h, r in zip(held_sets(model, requests), requests)]
        dev = self.device
        mask = client_masks(names, stepped, dev)
        values = {n: torch.stack([start_value(r, n, named[n]).to(dev) for r in requests]) for n in names}
        buffers = chunk.buffers([r.state for r in requests])
        plain = masking_suffices(cfg.optimizer, fixed_rows=True)  # a client's trained parameters never change in a chunk
        lr = float(cfg.optimizer.lr)
        pulls = Pulls.of(requests, names, named, dev)
        offsets = to_device(_offset_table(requests, names), dev, source=CPU)
        seeds = uses_randomness(model)
        loss_sums = torch.zeros(C, len(chunk.tasks), dtype=torch.float64)
        steps = [len(e) for e in step_epochs]
        gens = [r.generator for r in requests]
        model.train()
        opt = FunctionalOptimizer(cfg.optimizer)
        leaves: dict[str, Tensor] = {}
        for s in range(S):
            k = sum(1 for n in steps if n > s)  # the clients still stepping: a prefix (longest plan first)
            if k != len(next(iter(leaves.values()), ())):
                leaves = {n: v[:k].detach().requires_grad_(True) for n, v in values.items()}  # views: steps write through
                opt = opt.narrowed(k)
                masks = row_masks({n: m[:k] for n, m in mask.items()})
                live_pulls, live_offsets = pulls.prefix(k), {n: o[:k] for n, o in offsets.items()}
            epochs = [step_epochs[c][s] for c in range(k)]
            step_rows = rows[s, :k].to(dev)
            step_rows = step_rows[:, : int((step_rows != chunk.padding_row).sum(1).max())]  # no all-padding columns
            live_buffers = {n: b[:k] for n, b in buffers.items()}  # views: BatchNorm statistics update in place
            grads, losses = chunk.gradients(leaves, live_buffers, step_rows, gens[:k], epochs, seed=dropout_seed([seed_generator]) if seeds else None)
            loss_sums[:k] += losses.double().cpu()
            with torch.no_grad():
                _step(opt, leaves, grads, masks, live_pulls, live_offsets, cfg.max_grad_norm, plain, lr)
        params = {n: v.cpu() for n, v in values.items()}
        new_buffers = {n: b.cpu() for n, b in buffers.items() if n in set(norm_buffer_names(model))}
        chunk.ostates = to_device(chunk.settle(), CPU, source=self.device)
        steps_t = torch.tensor(steps)
        return StackedResult(params, chunk.tasks, chunk.held, loss_sums / steps_t.clamp(min=1).double().unsqueeze(1), steps, chunk.ostates, new_buffers, requests)

    def train_private(self, requests: Sequence[TrainRequest]) -> list[LocalResult]:
        """DP-SGD local training of a chunk, as :func:`fedmtl.fl.dp_sgd_client.train_with_dp_sgd` trains one client.

        Every client's Poisson batches are drawn first, then per step: the task losses (for the objective's
        loss weights), every example's gradient (:func:`~fedmtl.fl.dp_sgd_client.example_gradients` under a
        second ``vmap``, over clients), clipping and noise per client
        (:func:`~fedmtl.privacy.dp.dpsgd.clip_and_noise`), the penalty's gradient, one optimiser step.
        """
        model, cfg, dp = self.model, self.cfg, self.dp_sgd
        assert dp is not None
        for r in requests:
            refuse_changed_steps(r.prox, r.grad_offset, r.trainable, r.epochs)
        C = len(requests)
        objectives = [self.objective(tuple(r.client.tasks)) for r in requests]
        refuse_unprivatisable(model, objectives[0].balancer.requires, self.mtl_cfg.balancer.name)
        ostates = to_device([r.state.objective or o.init() for r, o in zip(requests, objectives)], self.device, source=CPU)
        chunk = Chunk.of(model, [r.client for r in requests], objectives, ostates, self.device)
        schedules = [DPSGDSchedule.of(dp, len(r.client.train), cfg.batch_size, cfg.epochs) for r in requests]
        drawn_plans = [dp_batches(len(r.client.train), cfg.batch_size, s, dp.poisson_sampling, r.generator) for r, s in zip(requests, schedules)]
        plans: list[Plan] = [([idx for _, idx in p], [e for e, _ in p]) for p in drawn_plans]
        rows = padded_rows(chunk, plans)
        dev = self.device
        named = dict(model.named_parameters())
        names = chunk.names
        mask = client_masks(names, held_sets(model, requests), dev)
        leaves = {n: torch.stack([start_value(r, n, named[n]).to(dev) for r in requests]).requires_grad_(True) for n in names}
        buffers = chunk.buffers([r.state for r in requests])
        opt = FunctionalOptimizer(cfg.optimizer)
        sigmas = torch.tensor([s.noise_multiplier for s in schedules])
        expected = torch.tensor([s.expected_batch_size for s in schedules], device=dev)
        steps = torch.tensor([len(p[0]) for p in plans])
        gens = [r.generator for r in requests]
        task_objs = [model.tasks[t] for t in chunk.tasks]
        col = {t: i for i, t in enumerate(chunk.tasks)}
        loss_sums = torch.zeros(C, len(chunk.tasks), dtype=torch.float64)
        with_rows = torch.zeros(C)
        plain = masking_suffices(cfg.optimizer, fixed_rows=False)  # a client whose steps ran out stops stepping

        def per_client(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, ys: dict[str, Tensor], w: Tensor) -> dict[str, Tensor]:
            return example_gradients(model, p, b, x, ys, task_objs, w)

        model.train()
        for s in range(rows.shape[0]):
            active = steps > s
            step_rows = rows[s].to(dev)
            drawn = (step_rows != chunk.padding_row).to(torch.float32)
            step_rows = step_rows[:, : max(1, int(drawn.sum(1).max()))]
            drawn = drawn[:, : step_rows.shape[1]]
            with torch.set_grad_enabled(chunk.has_penalty):  # the losses only weigh tasks; the penalty is differentiated
                loss_mat, penalty = chunk._active_losses(leaves, buffers, step_rows, active.to(dev), None, None)
            detached = loss_mat.detach()
            W = torch.zeros(C, len(chunk.tasks), device=dev)
            for c in range(C):
                if bool(active[c]) and bool(drawn[c].any()):
                    cols = [col[t] for t in objectives[c].tasks]
                    w, chunk.ostates[c] = objectives[c].plan(detached[c, cols], chunk.ostates[c], gens[c], plans[c][1][s])
                    assert w is not None  # a loss-weighting balancer (refused otherwise)
                    W[c, cols] = w.to(W)
                    loss_sums[c, cols] += detached[c, cols].double().cpu()
                    with_rows[c] += 1
            # only the clients still stepping: with skewed client sizes most of a late step's chunk is done
            on = active.nonzero().flatten()
            on_dev = on.to(dev)
            values = {n: v.detach().index_select(0, on_dev) for n, v in leaves.items()}
            live_buffers = {n: b.index_select(0, on_dev) for n, b in buffers.items()}
            live_rows = step_rows.index_select(0, on_dev)
            per_row = vmap(per_client, randomness="different")(values, live_buffers, chunk.x[live_rows], {t: y[live_rows] for t, y in chunk.y.items()}, W.index_select(0, on_dev))
            live = clip_and_noise(
                per_row, drawn.index_select(0, on_dev), {n: m.index_select(0, on_dev) for n, m in mask.items()}, dp.max_grad_norm,
                sigmas.index_select(0, on), expected.index_select(0, on_dev), [gens[int(c)] for c in on],
            )
            act = active.to(torch.float32).to(dev)
            private = {n: torch.zeros_like(leaves[n]).index_copy_(0, on_dev, g) for n, g in live.items()}
            grads: dict[str, Tensor | None] = dict(private)
            if chunk.has_penalty:
                penalty_grads = torch.autograd.grad(penalty.sum(), [leaves[n] for n in names], allow_unused=True)
                grads = {n: (private[n] if p is None else private[n] + p) for n, p in zip(names, penalty_grads)}
            with torch.no_grad():
                _step(opt, leaves, grads, row_masks(mask, act), Pulls(), {}, None, plain, float(cfg.optimizer.lr))
        params = {n: v.detach().cpu() for n, v in leaves.items()}
        chunk.ostates = to_device(chunk.ostates, CPU, source=self.device)
        result = StackedResult(params, chunk.tasks, chunk.held, loss_sums / with_rows.clamp(min=1).double().unsqueeze(1), steps.tolist(), chunk.ostates, {}, requests)
        out = result.unstack(model)
        for r, res, schedule in zip(requests, out, schedules):
            history = schedule.account(prior_accountant(r.state, dp))
            res.state.privacy[HISTORY_KEY] = history.history_tensor()
            res.metrics["dp_sgd_epsilon"] = history.epsilon(dp.delta)
        return out

    def grads(self, requests: Sequence[GradRequest]) -> list[tuple[dict[str, Tensor], Tensor, TensorTree]]:
        """One minibatch's balanced gradients per request (APFL, pFedMe, FedEM's own steps), as :meth:`LocalTrainer.grads`."""
        norm = has_norm_statistics(self.model)
        return _per_group([batch_key(self.model, r.client.tasks, [len(r.idx)], norm) for r in requests], lambda members: self._grads([requests[i] for i in members]))

    def _grads(self, requests: Sequence[GradRequest]) -> list[tuple[dict[str, Tensor], Tensor, TensorTree]]:
        model = self.model
        chunk = Chunk.of(model, [r.client for r in requests], [r.objective for r in requests], to_device([r.ostate for r in requests], self.device, source=CPU), self.device)
        named = dict(model.named_parameters())
        leaves = {n: torch.stack([r.params[n] if n in r.params else named[n].detach() for r in requests]).detach().to(self.device).requires_grad_(True) for n in chunk.names}
        B = max(len(r.idx) for r in requests)
        rows = torch.full((len(requests), B), chunk.padding_row, dtype=torch.long)
        weights = torch.zeros(len(requests), B) if any(r.weights is not None for r in requests) else None
        for c, (r, off) in enumerate(zip(requests, chunk.offsets)):
            rows[c, : len(r.idx)] = r.idx + off
            if weights is not None:
                weights[c, : len(r.idx)] = r.weights if r.weights is not None else 1.0
        # the sequential step averages weighted rows over the batch (mean), padded rows weigh nothing
        buffers = chunk.buffers([ClientState() for _ in requests])
        gens = [r.generator for r in requests]
        model.train()
        seed = dropout_seed(gens) if uses_randomness(model) else None
        rows, weights = rows.to(self.device), (weights.to(self.device) if weights is not None else None)
        grads, losses = chunk.gradients(leaves, buffers, rows, gens, [r.epoch for r in requests], weights, seed)
        grads = {n: (g.cpu() if g is not None else None) for n, g in grads.items()}
        losses = losses.cpu()
        chunk.ostates = to_device(chunk.settle(), CPU, source=self.device)
        out = []
        col = {t: i for i, t in enumerate(chunk.tasks)}
        for c, r in enumerate(requests):
            g = {n: (grads[n][c].clone() if grads[n] is not None else torch.zeros_like(v)) for n, v in r.params.items()}  # type: ignore[index]
            loss = losses[c, [col[t] for t in r.client.tasks]].sum()
            out.append((g, loss, chunk.ostates[c]))
        return out


#: where the server keeps client states and results
CPU = torch.device("cpu")


def to_device(tree, device: torch.device, source: torch.device | None = None):  # type: ignore[no-untyped-def]
    """A nested structure of tensors (dicts, lists, tuples) with every tensor on ``device``; ``source``: where
    every tensor of it is known to be (``tree`` itself when that is ``device``: nothing to walk)."""
    if source is not None and source == device:
        return tree
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def _has_penalty(model: MultiTaskModel) -> bool:
    return type(model).penalty is not MultiTaskModel.penalty


def start_value(req: TrainRequest, name: str, default: Tensor) -> Tensor:
    local = req.state.local
    if name in local:
        value: Tensor = local[name].detach()
        return value
    if name in req.start:
        return req.start[name].detach()
    return default.detach()


@dataclass
class Pulls:
    """The chunk's proximal pulls per parameter: centres ``[C, ...]`` and per-client weights ``[C]`` of the
    explicit pull (a gradient term, FedProx) and of the implicit one (a proximal step, Ditto and MOCHA); a
    parameter no client pulls that way is absent from that table, so it costs nothing."""

    centres: dict[str, Tensor] = field(default_factory=dict)
    explicit: dict[str, Tensor] = field(default_factory=dict)
    implicit: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, requests: Sequence[TrainRequest], names: Sequence[str], named: Mapping[str, Tensor], device: torch.device) -> Pulls:
        pulls = cls()
        if all(r.prox is None for r in requests):
            return pulls
        for n in names:
            weights = [r.prox.weight_of(n) if r.prox is not None and n in r.prox.center else 0.0 for r in requests]
            implicit = [w if r.prox is not None and r.prox.implicit else 0.0 for w, r in zip(weights, requests)]
            explicit = [w - i for w, i in zip(weights, implicit)]
            if any(explicit):
                pulls.explicit[n] = torch.tensor(explicit, device=device)
            if any(implicit):
                pulls.implicit[n] = torch.tensor(implicit, device=device)
            if any(weights):
                pulls.centres[n] = torch.stack([r.prox.center[n].detach() if r.prox is not None and n in r.prox.center else named[n].detach() for r in requests]).to(device)
        return pulls

    def prefix(self, k: int) -> Pulls:
        """The pulls of the first ``k`` clients (views)."""
        return Pulls({n: c[:k] for n, c in self.centres.items()}, {n: w[:k] for n, w in self.explicit.items()}, {n: w[:k] for n, w in self.implicit.items()})


def _offset_table(requests: Sequence[TrainRequest], names: Sequence[str]) -> dict[str, Tensor]:
    """SCAFFOLD's constant per-step gradient offset, stacked per parameter (zeros for clients without one)."""
    if all(r.grad_offset is None for r in requests):
        return {}
    out = {}
    for n in names:
        if any(r.grad_offset is not None and n in r.grad_offset for r in requests):
            ref = next(r.grad_offset[n] for r in requests if r.grad_offset is not None and n in r.grad_offset)
            out[n] = torch.stack([r.grad_offset[n] if r.grad_offset is not None and n in r.grad_offset else torch.zeros_like(ref) for r in requests])
    return out


def _weighted_rows(rows: Sequence[Tensor | None], weights: Tensor) -> Tensor | None:
    """``Σ_k weights[k, c] · rows[k][c]`` per client ``c``: the per-task passes' gradients of one parameter
    combined with each client's task weights ``[K, C]`` (``None`` where no task's loss reaches the parameter)."""
    if rows[0] is None:
        return None
    out = rows[0] * _bcast(weights[0], rows[0])
    for row, w in zip(rows[1:], weights[1:]):
        assert row is not None  # every pass reaches the same parameters
        out = out + row * _bcast(w, row)
    return out


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view((-1,) + (1,) * (like.dim() - 1))


def row_masks(mask: Mapping[str, Tensor], active: Tensor | None = None) -> dict[str, Tensor | None]:
    """What :func:`_step` masks, decided once: per parameter some clients train, ``None`` where every client of
    the chunk does (nothing to mask); a parameter no client trains is left out (it does not step)."""
    out: dict[str, Tensor | None] = {}
    for n, m in mask.items():
        m = m if active is None else m * active
        if bool(m.all()):
            out[n] = None
        elif bool(m.any()):
            out[n] = m
    return out


def masking_suffices(opt_cfg: SGD | Adam, fixed_rows: bool) -> bool:
    """Whether a zero gradient leaves a masked row, and its optimiser state, exactly where they are, so that
    masking the gradient is enough: plain SGD always; SGD with momentum and Adam too when the masked rows never
    step (``fixed_rows``: the same rows are masked from the first step on, so their momentum or moments are zero
    and stay zero). Weight decay moves a parameter at zero gradient: never."""
    if opt_cfg.weight_decay != 0:
        return False
    return fixed_rows or (isinstance(opt_cfg, SGD) and opt_cfg.momentum == 0)


def _step(opt: FunctionalOptimizer, leaves: dict[str, Tensor], grads: Mapping[str, Tensor | None], masks: Mapping[str, Tensor | None], pulls: Pulls, offsets: Mapping[str, Tensor], clip: float | None, plain: bool, lr: float) -> None:
    """One optimiser step of every active client, exactly as the sequential trainer's step on its own parameters.

    ``masks``: :func:`row_masks` (the clients that step each parameter); ``plain``: :func:`masking_suffices`.
    """
    live = {}
    for n, p in leaves.items():
        g = grads.get(n)
        if g is None or n not in masks:
            continue
        m = masks[n]
        if n in pulls.explicit:  # explicit proximal term (FedProx): gradient of weight/2 ||w - c||^2
            g = g + _bcast(pulls.explicit[n], g) * (p.detach() - pulls.centres[n])
        live[n] = (g if m is None else g * _bcast(m, g), m)
    if clip is not None and live:
        sq = cast(Tensor, sum(g.pow(2).flatten(1).sum(1) for g, _ in live.values()))
        coef = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        live = {n: (g * _bcast(coef, g), m) for n, (g, m) in live.items()}
    step_grads = {n: (g + (offsets[n] if m is None else offsets[n] * _bcast(m, g)) if n in offsets else g) for n, (g, m) in live.items()}
    if plain:
        opt.step(leaves, step_grads)
    else:  # momentum, weight decay and Adam move a parameter even at zero gradient: restore the rows that must not move
        saved = {}
        for n, (_, m) in live.items():
            if m is None:
                continue
            rows = (m == 0).nonzero().flatten()
            p = leaves[n]
            state = {k: v[rows].clone() for k, v in opt.state.get(n, {}).items() if v.shape == p.shape}
            saved[n] = (rows, p.detach()[rows].clone(), state)
        opt.step(leaves, step_grads)
        for n, (rows, old_p, old_state) in saved.items():
            p = leaves[n]
            p.index_copy_(0, rows, old_p)
            for key, v in opt.state.get(n, {}).items():  # plain SGD keeps no state
                if v.shape == p.shape:  # a buffer the step created starts at zero
                    v.index_copy_(0, rows, old_state[key] if key in old_state else v.new_zeros((len(rows), *v.shape[1:])))
    for n, (_g, m) in live.items():
        if n in pulls.implicit:
            pull = lr * pulls.implicit[n]
            shrink = _bcast(pull if m is None else pull * m, leaves[n])
            leaves[n].copy_((leaves[n] + shrink * pulls.centres[n]) / (1 + shrink))


@dataclass
class StackedResult:
    """A chunk's results, still stacked: ``params[name][c]`` is client ``c``'s trained value.

    Parameters a client does not hold keep their start value, never trained.
    """

    params: dict[str, Tensor]
    tasks: list[str]
    held: Tensor
    loss_mean: Tensor
    steps: list[int]
    ostates: list[TensorTree]
    buffers: dict[str, Tensor]
    requests: Sequence[TrainRequest]

    def reordered(self, order: Sequence[int], requests: Sequence[TrainRequest]) -> StackedResult:
        """The result of training ``requests`` permuted by ``order``, back in the requests' own order."""
        inv = [0] * len(order)
        for i, c in enumerate(order):
            inv[c] = i
        idx = torch.tensor(inv)
        return StackedResult(
            {n: v.index_select(0, idx) for n, v in self.params.items()}, self.tasks, self.held.index_select(0, idx.to(self.held.device)),
            self.loss_mean.index_select(0, idx), [self.steps[i] for i in inv], [self.ostates[i] for i in inv],
            {n: b.index_select(0, idx) for n, b in self.buffers.items()}, requests,
        )

    def weighted_sum(self, name: str, w: Tensor) -> Tensor:
        """``Σ_c w_c θ_c`` of parameter ``name``, flattened (a streamed round's reduction, one matrix-vector product)."""
        return w @ self.params[name].reshape(len(w), -1)

    def nonfinite_rows(self, name: str) -> Tensor:
        """``[C]`` the clients whose trained ``name`` is not finite."""
        return ~torch.isfinite(self.params[name].reshape(len(self.steps), -1)).all(1)

    def state(self, model: MultiTaskModel, c: int) -> ClientState:
        """Client ``c``'s next state, as :func:`fedmtl.fl.client.finish_local` builds it (objective, local
        parameters, its own BatchNorm statistics)."""
        local = {n: v[c].clone() for n, v in self.params.items() if model.group_of(n) == LOCAL}
        buffers = {n: b[c].clone() for n, b in self.buffers.items()} if self.buffers else {}
        return ClientState(objective=self.ostates[c], local=local, buffers=buffers)

    def unstack(self, model: MultiTaskModel) -> list[LocalResult]:
        """Per-client :class:`LocalResult` s, as the sequential trainer returns them."""
        col = {t: i for i, t in enumerate(self.tasks)}
        out = []
        for c, req in enumerate(self.requests):
            tasks = list(req.client.tasks)
            trained = {k: self.params[k][c].clone() for k in held_parameter_names(model, tasks)}
            metrics = {f"loss/{t}": float(self.loss_mean[c, col[t]]) for t in tasks}
            metrics["steps"] = float(self.steps[c])
            out.append(LocalResult(trained, metrics, self.state(model, c)))
        return out


__all__ = ["GradRequest", "StackedResult", "StackedTraining", "TrainRequest"]
