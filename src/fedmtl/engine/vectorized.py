"""The vectorised engine: a whole cohort's local training as one batched computation.

Every client of a chunk of the cohort keeps its own copy of the parameters, stacked along a leading
client dimension (``W: [C, out, in]``). One local step of all clients is a handful of batched matrix
products (``baddbmm`` forward, ``bmm`` backward, written out by hand for Linear/activation stacks)
followed by one fused optimiser update per parameter. The maths is exactly
:meth:`fedmtl.fl.client.LocalTrainer.train`'s:

* the same batches: each client's :func:`~fedmtl.fl.batching.batch_plan` is drawn from its own
  generator, in the same order; steps are padded to the longest client and a padded step leaves the
  client's parameters *and* optimiser state untouched (a masked update);
* a partial batch averages over its real rows only (row mask, per-client row count);
* task heads are per-group: a client's loss covers only its own tasks, and heads it does not hold are
  neither trained nor returned;
* loss-weighting balancers (``requires == "losses"``): constant ones (equal, static) are applied as a
  ``[C, T]`` weight table; stateful or random ones are called per client and step with that client's
  detached losses, its state and its generator, as the sequential objective calls them;
* SGD (momentum, weight decay) and Adam (weight decay, bias correction per client), and
  ``max_grad_norm`` clipping per client.

What it cannot batch (a non-vectorizable algorithm, a gradient-balancing balancer, a scheme other than
the weighted sum, a model that is not an MLP hard-sharing model, dropout) runs on the sequential
engine instead, with one warning per feature naming it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmtl.config.training import SGD
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.batching import batch_plan
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.cohort import CohortJob
from fedmtl.mtl import BalanceInput, HardSharingModel, MultiTaskModel, build_objective
from fedmtl.mtl.models.trunks import MLPTrunk
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.tree import TensorTree

log = logging.getLogger("fedmtl")

_ACTS: dict[type, str] = {nn.ReLU: "relu", nn.GELU: "gelu", nn.Tanh: "tanh"}


# --------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Layer:
    """One linear layer and the activation that follows it (``None``: none)."""

    weight: str
    bias: str | None
    act: str | None


@dataclass(frozen=True)
class MLPSpec:
    """A hard-sharing model whose trunk and heads are Linear/activation stacks."""

    trunk: tuple[Layer, ...]
    heads: dict[str, tuple[Layer, ...]]


def _layers(seq: nn.Module, prefix: str) -> tuple[Layer, ...]:
    mods = list(seq.named_children())
    out: list[Layer] = []
    i = 0
    while i < len(mods):
        name, m = mods[i]
        if not isinstance(m, nn.Linear):
            raise _Unsupported(f"module {prefix}{name} ({type(m).__name__})")
        act = None
        if i + 1 < len(mods) and not isinstance(mods[i + 1][1], nn.Linear):
            nxt = mods[i + 1][1]
            if type(nxt) not in _ACTS or (isinstance(nxt, nn.GELU) and nxt.approximate != "none"):
                raise _Unsupported(f"module {prefix}{mods[i + 1][0]} ({type(nxt).__name__})")
            act = _ACTS[type(nxt)]
            i += 1
        out.append(
            Layer(f"{prefix}{name}.weight", f"{prefix}{name}.bias" if m.bias is not None else None, act)
        )
        i += 1
    return tuple(out)


class _Unsupported(Exception):
    """A feature the vectorised path does not batch; the message names it."""


def mlp_spec(model: MultiTaskModel) -> MLPSpec:
    """The layer structure of an MLP hard-sharing model, or :class:`_Unsupported` naming what is not."""
    if not isinstance(model, HardSharingModel):
        raise _Unsupported(f"model {type(model).__name__} (only hard sharing is vectorised)")
    if not isinstance(model.trunk, MLPTrunk):
        raise _Unsupported(f"trunk {type(model.trunk).__name__} (only the MLP trunk is vectorised)")
    trunk = _layers(model.trunk.net, "trunk.net.")
    heads = {t: _layers(model.heads[t], f"heads.{t}.") for t in model.task_names}
    return MLPSpec(trunk, heads)


# ------------------------------------------------------------------------------------------ kernels
def _act_fwd(kind: str | None, h: Tensor) -> Tensor:
    if kind is None:
        return h
    if kind == "relu":
        return h.relu_()
    if kind == "tanh":
        return h.tanh_()
    return F.gelu(h)


def _act_bwd(kind: str | None, grad: Tensor, pre: Tensor, post: Tensor) -> Tensor:
    """Gradient through the activation, given its input ``pre`` and output ``post``."""
    if kind is None:
        return grad
    if kind == "relu":
        return torch.ops.aten.threshold_backward(grad, post, 0)
    if kind == "tanh":
        return grad.mul_(1 - post * post)
    cdf = 0.5 * (1 + torch.erf(pre * (1 / math.sqrt(2))))
    pdf = torch.exp(-0.5 * pre * pre) * (1 / math.sqrt(2 * math.pi))
    return grad.mul_(cdf + pre * pdf)


def _loss_and_grad(
    kind: str, logits: Tensor, y: Tensor, mask: Tensor, inv_n: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-client mean loss over real rows ``[C]`` and its gradient w.r.t. ``logits`` ``[C, B, K]``.

    ``mask [C, B]`` marks real rows, ``inv_n [C]`` is one over their count (0 where none).
    """
    if kind == "multiclass":
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        grad = logp.exp_()
        grad.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(nll, -1.0).unsqueeze(-1))
    elif kind == "binary":
        z = logits.squeeze(-1)
        yf = y.to(z.dtype)
        nll = F.binary_cross_entropy_with_logits(z, yf, reduction="none")
        grad = (torch.sigmoid(z) - yf).unsqueeze(-1)
    else:
        z = logits.squeeze(-1)
        diff = z - y.to(z.dtype)
        nll = diff * diff
        grad = (2 * diff).unsqueeze(-1)
    loss = (nll * mask).sum(1) * inv_n
    grad = grad * (mask * inv_n.unsqueeze(1)).unsqueeze(-1)
    return loss, grad


# --------------------------------------------------------------------------------------- optimiser
class _Optimiser:
    """SGD (momentum, weight decay) or Adam over stacked parameters, one masked update per tensor.

    Matches ``torch.optim.SGD`` / ``torch.optim.Adam`` (defaults: no dampening, no Nesterov, no AMSGrad).
    """

    def __init__(self, cfg: object, params: dict[str, Tensor], num_clients: int):
        self.cfg = cfg
        self.sgd = isinstance(cfg, SGD)
        self.buf: dict[str, Tensor] = {}
        self.exp_avg: dict[str, Tensor] = {}
        self.exp_sq: dict[str, Tensor] = {}
        if self.sgd and cfg.momentum > 0:  # type: ignore[attr-defined]
            self.buf = {n: torch.zeros_like(p) for n, p in params.items()}
        if not self.sgd:
            self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
            self.exp_sq = {n: torch.zeros_like(p) for n, p in params.items()}
            self.steps = torch.zeros(num_clients, dtype=torch.float64)

    @property
    def plain(self) -> bool:
        """Plain SGD: a step is ``p -= lr * g`` and a zero gradient leaves ``p`` unchanged."""
        return self.sgd and not self.buf and self.cfg.weight_decay == 0  # type: ignore[attr-defined]

    def begin_step(self, active: Tensor) -> None:
        if not self.sgd:
            self.steps += active.to(torch.float64)
            b1, b2 = self.cfg.betas  # type: ignore[attr-defined]
            t = self.steps.clamp(min=1)
            bc1 = 1 - b1**t
            bc2 = 1 - b2**t
            self.step_size = (self.cfg.lr / bc1).to(torch.float32)  # type: ignore[attr-defined]
            self.bc2_sqrt = bc2.sqrt().to(torch.float32)

    def update(self, name: str, p: Tensor, g: Tensor, active: Tensor) -> None:
        """Update ``p [C, ...]`` in place with gradient ``g``; clients where ``active`` is 0 are frozen."""
        cfg = self.cfg
        shape = (-1,) + (1,) * (p.dim() - 1)
        a = active.view(shape)
        if self.plain:
            p.sub_(g * a, alpha=cfg.lr)  # type: ignore[attr-defined]
            return
        if cfg.weight_decay:  # type: ignore[attr-defined]
            g = g.add(p, alpha=cfg.weight_decay)  # type: ignore[attr-defined]
        if self.sgd:
            buf = self.buf[name]
            # torch.optim.SGD: buf = g on the first step, buf = m * buf + g afterwards; a zero buffer makes them one rule
            buf.copy_(torch.where(a > 0, buf * cfg.momentum + g, buf))  # type: ignore[attr-defined]
            p.sub_(buf * a, alpha=cfg.lr)  # type: ignore[attr-defined]
            return
        b1, b2 = cfg.betas  # type: ignore[attr-defined]
        m, v = self.exp_avg[name], self.exp_sq[name]
        m.copy_(torch.where(a > 0, m * b1 + g * (1 - b1), m))
        v.copy_(torch.where(a > 0, v * b2 + g * g * (1 - b2), v))
        denom = (v.sqrt() / self.bc2_sqrt.view(shape)).add_(cfg.eps)  # type: ignore[attr-defined]
        p.sub_(m / denom * (self.step_size.view(shape) * a))


# ------------------------------------------------------------------------------------------ engine
class VectorizedEngine:
    """Trains a cohort in chunks of clients, each chunk as one batched computation.

    Args:
        chunk_clients: clients per batched computation; ``None`` picks it from ``memory_budget_mb``.
        memory_budget_mb: working memory a chunk may use (parameters, gradients, optimiser state, activations).
        fallback: the engine for jobs this one cannot batch (default: sequential).
    """

    name = "vectorized"

    def __init__(
        self, chunk_clients: int | None = None, memory_budget_mb: int = 512, fallback: object | None = None
    ):
        from fedmtl.engine.sequential import SequentialEngine

        self.chunk_clients = chunk_clients
        self.memory_budget_mb = memory_budget_mb
        self.fallback = fallback if fallback is not None else SequentialEngine()
        self._warned: set[str] = set()
        self._announced = False
        self.last_run: dict[str, int] = {}

    # -- support checks -----------------------------------------------------------------------
    def unsupported(self, algorithm: Algorithm, trainer: LocalTrainer) -> str | None:
        """Why this cohort cannot be batched (the feature's name), or ``None`` when it can."""
        if not getattr(algorithm, "vectorizable", False):
            return f"algorithm {getattr(algorithm, 'name', type(algorithm).__name__)!r} (its own local training loop)"
        if getattr(trainer, "dp_sgd", None) is not None:
            return "sample-level DP-SGD (privacy.dp_sgd)"
        scheme = getattr(trainer.mtl_cfg.scheme, "name", "?")
        if scheme != "weighted_sum":
            return f"joint-optimisation scheme {scheme!r}"
        try:
            mlp_spec(trainer.model)
        except _Unsupported as exc:
            return str(exc)
        if any(isinstance(m, nn.Dropout) and m.p > 0 for m in trainer.model.modules()):
            return "dropout"
        opt = trainer.cfg.optimizer
        if opt.name not in ("sgd", "adam"):
            return f"client optimiser {opt.name!r}"
        return None

    def _objective_unsupported(self, objective: object) -> str | None:
        if type(objective) is not MultiTaskObjective:
            return f"objective {type(objective).__name__}"
        req = objective.balancer.requires  # type: ignore[attr-defined]
        if req != "losses":
            return f"balancer {type(objective.balancer).__name__} (requires {req!r}: gradient balancing)"  # type: ignore[attr-defined]
        return None

    def _warn(self, feature: str) -> None:
        if feature not in self._warned:
            self._warned.add(feature)
            log.warning(
                "vectorized engine: %s cannot be vectorised; those clients run on the sequential engine",
                feature,
            )

    # -- the protocol -------------------------------------------------------------------------
    def run_cohort(
        self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]
    ) -> list[LocalResult]:
        reason = self.unsupported(algorithm, trainer)
        if reason is not None:
            self._warn(reason)
            self.last_run = {"vectorized": 0, "sequential": len(jobs)}
            return self.fallback.run_cohort(algorithm, trainer, jobs)  # type: ignore[attr-defined]
        objectives, batched, fallback = self._sort_jobs(trainer, jobs)
        for _, why in fallback:
            self._warn(why)
        seq = [i for i, _ in fallback]
        results: list[LocalResult | None] = [None] * len(jobs)
        if seq:
            for i, r in zip(seq, self.fallback.run_cohort(algorithm, trainer, [jobs[i] for i in seq])):  # type: ignore[attr-defined]
                results[i] = r
        spec = mlp_spec(trainer.model)
        chunk = self.chunk_size(trainer)
        for lo in range(0, len(batched), chunk):
            idx = batched[lo : lo + chunk]
            sub = [jobs[i] for i in idx]
            out = _train_chunk(spec, trainer, sub, objectives).unstack(trainer.model, sub)
            for i, r in zip(idx, out):
                results[i] = r
        self.last_run = {"vectorized": len(batched), "sequential": len(seq)}
        if not self._announced:
            self._announced = True
            log.info(
                "engine: vectorized (%d clients batched in chunks of %d, %d on the sequential fallback)",
                len(batched),
                chunk,
                len(seq),
            )
        return results  # type: ignore[return-value]

    def run_stacked(
        self, algorithm: Algorithm, trainer: LocalTrainer, jobs: Sequence[CohortJob]
    ) -> StackedResult | None:
        """Train ``jobs`` as one chunk and return the stacked result, or ``None`` if any job needs the fallback.

        For rounds that reduce updates without unstacking them (:class:`fedmtl.engine.reducing.ReducingFederation`).
        """
        if self.unsupported(algorithm, trainer) is not None:
            return None
        objectives, _, fallback = self._sort_jobs(trainer, jobs)
        if fallback:
            return None
        if not self._announced:
            self._announced = True
            log.info("engine: vectorized (stacked chunks of %d clients)", len(jobs))
        self.last_run = {"vectorized": len(jobs), "sequential": 0}
        return _train_chunk(mlp_spec(trainer.model), trainer, jobs, objectives)

    def _sort_jobs(
        self, trainer: LocalTrainer, jobs: Sequence[CohortJob]
    ) -> tuple[dict[tuple[str, ...], MultiTaskObjective], list[int], list[tuple[int, str]]]:
        """Each task set's objective; the jobs that can be batched; the others, each with the reason."""
        objectives: dict[tuple[str, ...], MultiTaskObjective] = {}
        batched: list[int] = []
        fallback: list[tuple[int, str]] = []
        for i, job in enumerate(jobs):
            tasks = tuple(job.client.tasks)
            if tasks not in objectives:
                objectives[tasks] = build_objective(trainer.mtl_cfg, tasks)
            why = self._objective_unsupported(objectives[tasks])
            if why is None and job.state.get("local"):
                why = "client-local parameters"
            if why is None:
                batched.append(i)
            else:
                fallback.append((i, why))
        return objectives, batched, fallback

    def chunk_size(self, trainer: LocalTrainer) -> int:
        return self.chunk_clients or self._auto_chunk(trainer.model, trainer.cfg)

    def _auto_chunk(self, model: nn.Module, cfg: object) -> int:
        """Clients per chunk so that parameters, gradients, optimiser state and activations fit the budget."""
        n_params = sum(p.numel() for p in model.parameters())
        opt = cfg.optimizer  # type: ignore[attr-defined]
        copies = 3 + (2 if opt.name == "adam" else 1 if getattr(opt, "momentum", 0) > 0 else 0)
        widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        per_client = 4 * (copies * n_params + 3 * cfg.batch_size * widths)  # type: ignore[attr-defined]
        return max(1, min(4096, (self.memory_budget_mb << 20) // per_client))


# ------------------------------------------------------------------------------------ chunk trainer
def _plans(
    trainer: LocalTrainer, jobs: Sequence[CohortJob]
) -> tuple[Tensor, Tensor, Tensor, list[list[int]]]:
    """Each client's batch plan as padded global row indices ``[S, C, B]``, a row mask, and epochs.

    Rows index the concatenation of the chunk's training sets plus one trailing zero row (padding).
    """
    bs, epochs = trainer.cfg.batch_size, trainer.cfg.epochs
    sizes = [len(j.client.train) for j in jobs]
    B = min(bs, max(sizes))
    total = sum(sizes)
    per_client, step_epochs = [], []
    offset = 0
    for job, n in zip(jobs, sizes):
        plan = batch_plan(n, bs, epochs, job.generator)
        nb = -(-n // bs)
        rows = torch.full((epochs, nb * bs), total, dtype=torch.long)
        for e, batches in enumerate(plan):
            rows[e, :n] = torch.cat(batches) + offset
        per_client.append(rows.view(epochs * nb, bs)[:, :B])
        step_epochs.append([e for e in range(epochs) for _ in range(nb)])
        offset += n
    S = max(r.shape[0] for r in per_client)
    index = torch.full((S, len(jobs), B), total, dtype=torch.long)
    for c, r in enumerate(per_client):
        index[: r.shape[0], c] = r
    mask = (index < total).to(torch.float32)
    return index, mask, torch.tensor([len(e) for e in step_epochs]), step_epochs


def _train_chunk(
    spec: MLPSpec,
    trainer: LocalTrainer,
    jobs: Sequence[CohortJob],
    objectives: dict[tuple[str, ...], MultiTaskObjective],
) -> StackedResult:
    model = trainer.model
    C = len(jobs)
    all_tasks = [t for t in model.task_names if any(t in j.client.tasks for j in jobs)]
    held = torch.tensor([[float(t in j.client.tasks) for t in all_tasks] for j in jobs])  # [C, T]
    kinds = {t: model.tasks[t].kind for t in all_tasks}
    index, mask, steps_per_client, step_epochs = _plans(trainer, jobs)
    S = index.shape[0]

    # data: concatenated rows (+ a zero row for padding), per task targets (zeros where a client lacks the task)
    x_cat = torch.cat(
        [j.client.train.x.reshape(len(j.client.train), -1) for j in jobs]
        + [torch.zeros(1, math.prod(jobs[0].client.train.x.shape[1:]))]
    )
    y_cat = {}
    for t in all_tasks:
        dt = model.tasks[t].target_dtype()
        parts = [
            j.client.train.y[t].reshape(-1).to(dt)
            if t in j.client.tasks
            else torch.zeros(len(j.client.train), dtype=dt)
            for j in jobs
        ]
        y_cat[t] = torch.cat(parts + [torch.zeros(1, dtype=dt)])

    # stacked parameters (held heads from the client's start; others are placeholders, never updated)
    named = dict(model.named_parameters())
    layers = list(spec.trunk) + [lay for t in all_tasks for lay in spec.heads[t]]
    names = [n for lay in layers for n in (lay.weight, lay.bias) if n is not None]
    # with the fused SGD step a shared start stays a broadcast view until its first update writes the
    # per-client copy (one pass instead of copy + update); other optimisers update in place from the start
    lazy = trainer.cfg.max_grad_norm is None and isinstance(trainer.cfg.optimizer, SGD)
    lazy = lazy and trainer.cfg.optimizer.momentum == 0 and trainer.cfg.optimizer.weight_decay == 0
    params = {n: _stack_start(jobs, n, named[n], lazy) for n in names}
    head_of = {
        n: t for t in all_tasks for lay in spec.heads[t] for n in (lay.weight, lay.bias) if n is not None
    }

    # loss weights: constant [C, T] table, or a per-client balancer call each step
    states = []
    weights = torch.zeros(C, len(all_tasks))
    dynamic: list[int] = []
    for c, j in enumerate(jobs):
        obj = objectives[tuple(j.client.tasks)]
        ostate = j.state.get("objective") or obj.init()
        states.append({"balancer": ostate["balancer"], "step": int(ostate["step"])})  # type: ignore[call-overload, index]
        if obj.fixed_weights is None:  # a loss-based balancer (the scheme is a weighted sum: see unsupported())
            dynamic.append(c)
            continue
        for t, wt in zip(obj.tasks, obj.fixed_weights):
            weights[c, all_tasks.index(t)] = wt

    opt = _Optimiser(trainer.cfg.optimizer, params, C)
    lr = float(trainer.cfg.optimizer.lr)
    clip = trainer.cfg.max_grad_norm
    loss_sums = torch.zeros(C, len(all_tasks), dtype=torch.float64)
    counts = mask.sum(2)  # [S, C]
    task_col = {t: i for i, t in enumerate(all_tasks)}
    task_active = {t: held[:, i] for i, t in enumerate(all_tasks)}

    for s in range(S):
        m = mask[s]
        n = counts[s]
        active = (n > 0).to(torch.float32)
        inv_n = torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))
        idx = index[s]
        a = x_cat[idx]  # [C, B, D]
        # forward: trunk, then heads
        trunk_io = []
        for lay in spec.trunk:
            pre = _linear(a, params[lay.weight], params[lay.bias] if lay.bias else None)
            post = _act_fwd(lay.act, pre)
            trunk_io.append((a, pre, post))
            a = post
        z = a
        head_io, losses, dlogits = {}, {}, {}
        for t in all_tasks:
            h = z
            io = []
            for lay in spec.heads[t]:
                pre = _linear(h, params[lay.weight], params[lay.bias] if lay.bias else None)
                post = _act_fwd(lay.act, pre)
                io.append((h, pre, post))
                h = post
            head_io[t] = io
            rm = m * task_active[t].unsqueeze(1)
            losses[t], dlogits[t] = _loss_and_grad(kinds[t], h, y_cat[t][idx], rm, inv_n)
        loss_mat = torch.stack([losses[t] for t in all_tasks], 1)  # [C, T]
        loss_sums += loss_mat.double()
        w = weights
        if dynamic:
            w = weights.clone()
            for c in dynamic:
                if active[c] == 0:
                    continue
                obj = objectives[tuple(jobs[c].client.tasks)]
                cols = [task_col[t] for t in obj.tasks]
                bal, bstate = obj.balancer(
                    BalanceInput(
                        losses=loss_mat[c, cols].detach().clone(),
                        grads=None,
                        step=states[c]["step"] + s,
                        generator=jobs[c].generator,
                        epoch=step_epochs[c][s],
                    ),
                    states[c]["balancer"],
                )
                if bal.shared_direction is not None:
                    raise RuntimeError(
                        f"balancer {type(obj.balancer).__name__} says requires='losses' but returned a shared direction"
                    )
                w[c, cols] = bal.weights.to(w.dtype)
                states[c]["balancer"] = bstate
        # backward: heads (accumulating into dz), then trunk. Plain SGD without clipping updates each
        # weight in place as soon as its input gradient is taken (W -= lr * g^T a, one baddbmm_): no
        # gradient tensors, and padded rows/steps and other tasks' heads carry zero gradient.
        fused = opt.plain and clip is None
        grads: dict[str, Tensor] = {}

        def layer_backward(lay: Layer, g: Tensor, inp: Tensor, need_input_grad: bool) -> Tensor | None:
            g_in = torch.bmm(g, params[lay.weight]) if need_input_grad else None
            if fused:  # noqa: B023 - called within the iteration that defines it
                wt = params[lay.weight]
                if wt.is_contiguous():
                    wt.baddbmm_(g.transpose(1, 2), inp, alpha=-lr)
                else:  # still the broadcast start: write the per-client copy and the update in one pass
                    params[lay.weight] = torch.baddbmm(wt, g.transpose(1, 2), inp, alpha=-lr)
                if lay.bias:
                    bt = params[lay.bias]
                    if bt.is_contiguous():
                        bt.sub_(g.sum(1), alpha=lr)
                    else:
                        params[lay.bias] = bt - lr * g.sum(1)
            else:
                grads[lay.weight] = torch.bmm(g.transpose(1, 2), inp)  # noqa: B023
                if lay.bias:
                    grads[lay.bias] = g.sum(1)  # noqa: B023
            return g_in

        dz = None
        for t in all_tasks:
            g = dlogits[t] * w[:, task_col[t]].view(-1, 1, 1)
            for lay, (inp, pre, post) in zip(reversed(spec.heads[t]), reversed(head_io[t])):
                g = layer_backward(lay, _act_bwd(lay.act, g, pre, post), inp, True)  # type: ignore[assignment]
            dz = g if dz is None else dz.add_(g)
        g = dz
        for i, (lay, (inp, pre, post)) in enumerate(zip(reversed(spec.trunk), reversed(trunk_io))):
            g = layer_backward(lay, _act_bwd(lay.act, g, pre, post), inp, i < len(spec.trunk) - 1)  # type: ignore[assignment]
        if fused:
            continue
        if clip is not None:
            sq = sum(gr.pow(2).flatten(1).sum(1) for gr in grads.values())
            coef = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # type: ignore[union-attr]
            grads = {k: gr * coef.view((-1,) + (1,) * (gr.dim() - 1)) for k, gr in grads.items()}
        opt.begin_step(active)
        for name, gr in grads.items():
            act = active * task_active[head_of[name]] if name in head_of else active
            opt.update(name, params[name], gr, act)

    steps = steps_per_client.tolist()
    loss_mean = loss_sums / torch.tensor([max(n, 1) for n in steps], dtype=torch.float64).unsqueeze(1)
    new_states: list[TensorTree] = [
        {"objective": {"balancer": st["balancer"], "step": torch.tensor(st["step"] + n)}}
        for st, n in zip(states, steps)  # type: ignore[dict-item]
    ]
    return StackedResult(params, all_tasks, held, loss_mean, steps, new_states)


@dataclass
class StackedResult:
    """A chunk's results, still stacked: ``params[name][c]`` is client ``c``'s trained value.

    Heads of tasks a client does not hold (``held[c, t] == 0``) hold placeholder values, never trained.
    """

    params: dict[str, Tensor]
    tasks: list[str]
    held: Tensor
    loss_mean: Tensor
    steps: list[int]
    states: list[TensorTree]

    def unstack(self, model: MultiTaskModel, jobs: Sequence[CohortJob]) -> list[LocalResult]:
        """Per-client :class:`LocalResult` s, as the sequential trainer returns them."""
        col = {t: i for i, t in enumerate(self.tasks)}
        out = []
        for c, job in enumerate(jobs):
            tasks = list(job.client.tasks)
            trained = {k: self.params[k][c].clone() for k in held_parameter_names(model, tasks)}
            metrics = {f"loss/{t}": float(self.loss_mean[c, col[t]]) for t in tasks}
            metrics["steps"] = float(self.steps[c])
            out.append(LocalResult(trained, metrics, self.states[c]))
        return out


def _stack_start(jobs: Sequence[CohortJob], name: str, default: Tensor, lazy: bool = False) -> Tensor:
    """``[C, ...]`` start values of one parameter; one broadcast copy when every client starts from the same tensor."""
    vals = [j.start[name] if name in j.start else default.detach() for j in jobs]
    first = vals[0]
    if all(v is first for v in vals):
        view = first.unsqueeze(0).expand(len(vals), *first.shape)
        return view if lazy and len(vals) > 1 else view.contiguous()
    return torch.stack(vals)


def _linear(a: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``a @ W^T + b`` for every client: ``a [C, B, in]``, ``W [C, out, in]``, ``b [C, out]``."""
    if b is None:
        return torch.bmm(a, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
