"""The local multi-task objective: task losses in, gradients on the model's parameters out.

This is the training step that owns autograd. A joint-optimisation scheme decides which tasks
take part in a step and with which weights; otherwise the balancer turns the losses (and, when it
asks for them, per-task gradients of the shared coordinates) into loss weights, shared weights or a
shared direction. A model's regulariser (``model.penalty()``: soft-sharing coupling, MTRL's task
covariance term, distillation) is added here, with weight 1, so the federated loop never sees it.

Per-task gradients without ``T`` separate backward passes:

* ``source="parameters"``: the Jacobian of the loss vector w.r.t. all trainable parameters in one
  vectorised reverse pass (``torch.autograd.grad(..., grad_outputs=I_T, is_grads_batched=True)``);
  the shared block goes to the balancer, and every gradient is then a combination of the rows, so
  no second backward pass is needed.
* ``source="representation"``: the Jacobian w.r.t. the model's shared representation ``z`` (heads
  only, cheap; a single ordinary backward pass when the model offers per-task aliases of ``z``),
  then one backward pass through the trunk with the balanced ``dL/dz`` (MGDA-UB style).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from fedmtl.mtl.balancers.base import Balance, BalanceInput, Balancer, GradSource
from fedmtl.mtl.models.base import SHARED, MultiTaskModel
from fedmtl.mtl.schemes import Scheme, WeightedSum
from fedmtl.tree import TensorTree

JacobianMode = Literal["batched", "loop"]


def jacobian(loss_vec: Tensor, inputs: Sequence[Tensor], mode: JacobianMode = "batched", retain_graph: bool = False) -> list[Tensor]:
    """Rows ``d loss_vec[t] / d inputs``: one tensor ``[T, *x.shape]`` per input (zeros where unused).

    ``"batched"`` is a single vectorised reverse pass; if an operation has no batching rule it
    falls back to one pass per task with a warning.
    """
    t = loss_vec.numel()
    return [
        j if j is not None else torch.zeros((t, *x.shape), dtype=x.dtype, device=x.device)
        for j, x in zip(_jacobian(loss_vec, inputs, mode, retain_graph), inputs)
    ]


def _jacobian(loss_vec: Tensor, inputs: Sequence[Tensor], mode: JacobianMode, retain_graph: bool) -> list[Tensor | None]:
    """As :func:`jacobian`, with ``None`` for inputs no loss depends on."""
    t = loss_vec.numel()
    if mode == "batched" and t > 1:
        try:
            eye = torch.eye(t, dtype=loss_vec.dtype, device=loss_vec.device)
            return list(torch.autograd.grad(loss_vec, list(inputs), grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph, allow_unused=True))
        except RuntimeError as e:  # pragma: no cover - depends on torch's batching coverage
            if "vmap" not in str(e) and "batch" not in str(e).lower():
                raise
            warnings.warn(f"batched Jacobian failed ({e}); using one backward pass per task", RuntimeWarning, stacklevel=2)
    rows = [
        torch.autograd.grad(loss_vec[i], list(inputs), retain_graph=True if i < t - 1 else retain_graph, allow_unused=True)
        for i in range(t)
    ]
    out: list[Tensor | None] = []
    for j, x in enumerate(inputs):
        col = [r[j] for r in rows]
        out.append(None if all(g is None for g in col) else torch.stack([g if g is not None else torch.zeros_like(x) for g in col]))
    return out


def _accumulate(params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        g = g.detach()
        p.grad = g.clone() if p.grad is None else p.grad + g


def _split(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for p in like:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


class MultiTaskObjective:
    """Joint optimisation of a client's tasks: a scheme, a balancer, and the model's own penalty.

    Args:
        balancer: loss weighting / gradient balancing (used by the weighted-sum scheme).
        tasks: the task order the weights refer to (a client's own tasks).
        scheme: weighted sum (default), alternating or Lagrangian.
        grad_source: where per-task gradients are taken for gradient balancers.
        jacobian_mode: ``"batched"`` (one vectorised pass) or ``"loop"`` (one pass per task).
    """

    def __init__(
        self,
        balancer: Balancer,
        tasks: Sequence[str],
        scheme: Scheme | None = None,
        grad_source: GradSource = "parameters",
        jacobian_mode: JacobianMode = "batched",
    ):
        if not tasks:
            raise ValueError("an objective needs at least one task")
        if grad_source not in ("parameters", "representation"):
            raise ValueError(f"grad_source must be 'parameters' or 'representation', got {grad_source!r}")
        if jacobian_mode not in ("batched", "loop"):
            raise ValueError(f"jacobian_mode must be 'batched' or 'loop', got {jacobian_mode!r}")
        source = getattr(balancer, "forced_source", None) or grad_source
        if source == "representation" and not getattr(balancer, "representation_ok", True):
            raise ValueError(f"{type(balancer).__name__} keeps per-parameter state and needs grad_source='parameters'")
        self.balancer = balancer
        self.tasks = list(tasks)
        self.scheme: Scheme = scheme if scheme is not None else WeightedSum()
        self.grad_source: GradSource = source
        self.jacobian_mode: JacobianMode = jacobian_mode
        self._layout: tuple[tuple[int, ...], list[bool]] | None = None
        #: the task weights when they never change (equal or static weights, weighted-sum scheme), else None
        self.fixed_weights = self._fixed_weights()
        #: every step needs per-task gradients (a gradient balancer under the weighted-sum scheme): :meth:`plan`
        #: then only counts the step, and an engine may count it itself
        self.always_balanced = isinstance(self.scheme, WeightedSum) and self.balancer.requires != "losses"

    def _fixed_weights(self) -> list[float] | None:
        """The task weights when they never change (equal or static weights, weighted-sum scheme), else None."""
        from fedmtl.mtl.balancers.weighting import EqualWeighting, StaticWeighting

        if not isinstance(self.scheme, WeightedSum):
            return None
        if isinstance(self.balancer, EqualWeighting):
            return [1.0] * len(self.tasks)
        if isinstance(self.balancer, StaticWeighting):
            return [float(w) for w in self.balancer.weights]
        return None

    def _shared_mask(self, model: MultiTaskModel, params: list[torch.nn.Parameter]) -> list[bool]:
        """Which of ``params`` are shared; cached per parameter list (a model's groups do not change)."""
        key = tuple(map(id, params))
        if self._layout is None or self._layout[0] != key:
            names = {id(p): n for n, p in model.named_parameters()}
            self._layout = (key, [model.group_of(names[id(p)]) == SHARED for p in params])
        return self._layout[1]

    def init(self) -> TensorTree:
        return {
            "balancer": self.balancer.init(len(self.tasks)),
            "scheme": self.scheme.init(self.tasks),
            "step": torch.zeros((), dtype=torch.long),
        }

    def _plan(
        self, losses: Tensor, state: TensorTree, step: int, generator: torch.Generator | None, epoch: int
    ) -> tuple[Tensor | None, TensorTree, dict[str, float]]:
        """The step's loss weights when no per-task gradient is needed (the scheme's, else a loss-based
        balancer's), the scheme and balancer states after them, and the scheme's log; ``None`` weights
        when the balancer needs per-task gradients (then :meth:`balance` decides)."""
        fixed, sstate, slog = self.scheme.weights(losses, state["scheme"], step, epoch)  # type: ignore[arg-type]
        bstate = state["balancer"]
        if fixed is None and self.balancer.requires == "losses":
            balance, bstate = self.balancer(BalanceInput(losses=losses, grads=None, step=step, generator=generator, epoch=epoch), bstate)  # type: ignore[arg-type]
            if balance.shared_direction is not None:
                raise RuntimeError(f"balancer {type(self.balancer).__name__} says requires='losses' but returned a shared direction")
            fixed = balance.weights
        return fixed, {"balancer": bstate, "scheme": sstate}, slog

    def plan(
        self, losses: Tensor, state: TensorTree, generator: torch.Generator | None = None, epoch: int = 0
    ) -> tuple[Tensor | None, TensorTree]:
        """For engines that compute gradients themselves: this step's loss weights, or ``None`` when the
        balancer needs per-task gradients of the shared coordinates (call :meth:`balance` with them).

        Args:
            losses: the detached task losses ``[T]``.
            state: the objective state before the step.

        Returns:
            The weights (or ``None``) and the objective state after the step (step counter advanced;
            when the weights are ``None`` the balancer's state is advanced by :meth:`balance`).
        """
        step = int(state["step"])  # type: ignore[arg-type]
        fixed, planned, _ = self._plan(losses, state, step, generator, epoch)
        return fixed, {**planned, "step": torch.tensor(step + 1)}

    def balance(
        self, losses: Tensor, grads: Tensor, state: TensorTree, generator: torch.Generator | None = None, epoch: int = 0, gram: Tensor | None = None
    ) -> tuple[Balance, TensorTree]:
        """The gradient balancer's answer for per-task gradients ``grads [T, P]`` of the shared coordinates,
        and the objective state after the step (``state`` is what :meth:`plan` returned). ``gram``: their
        float64 Gramian when the caller has it already."""
        step = int(state["step"]) - 1  # type: ignore[arg-type]
        balance, bstate = self.balancer(BalanceInput(losses=losses, grads=grads, step=step, generator=generator, epoch=epoch, gram=gram), state["balancer"])  # type: ignore[arg-type]
        return balance, {**state, "balancer": bstate}

    def batch_balancer_key(self) -> object | None:
        """Which clients' balancing one :meth:`balance_batch` call may answer: those whose objectives give an
        equal key (balancers of one kind and configuration, any task set), or ``None`` when the balancer
        answers one client at a time. Only a balancer whose answer depends on nothing but the Gramian and the
        client's generator answers many (PCGrad)."""
        key = getattr(self.balancer, "batch_key", None)
        return key() if key is not None else None

    def balance_batch(
        self, grams: Tensor, states: Sequence[TensorTree], generators: Sequence[torch.Generator | None]
    ) -> tuple[Tensor, list[TensorTree]]:
        """:meth:`balance` for ``B`` clients with this objective's balancer and the same number of tasks, from
        their Gramians ``[B, T, T]``: the shared weights ``[B, T]`` (every loss weight is 1, as
        :meth:`Balance.for_shared` says) and each client's objective state after the step."""
        steps = [int(s["step"]) - 1 for s in states]  # type: ignore[call-overload]
        shared, bstates = self.balancer.balance_batch(grams, steps, generators, [s["balancer"] for s in states])  # type: ignore[attr-defined]
        return shared, [{**s, "balancer": b} for s, b in zip(states, bstates)]

    def backward(
        self,
        model: MultiTaskModel,
        losses: Mapping[str, Tensor],
        state: TensorTree,
        generator: torch.Generator | None = None,
        epoch: int = 0,
        want_log: bool = True,
    ) -> tuple[TensorTree, dict[str, float]]:
        """Accumulate this step's gradients into ``.grad`` and return the next state and a log.

        Args:
            model: the model whose parameters receive gradients.
            losses: task name -> scalar loss of this minibatch (graph attached).
            state: the objective's state (balancer and scheme states, step counter).
            generator: randomness for stochastic balancers.
            epoch: the local epoch (per-epoch alternation, DWA).
            want_log: False skips the per-step log (each entry is a device sync); with fixed weights
                the step is then one plain ``backward()`` of the weighted sum, the hot path of FedAvg.
        """
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"objective expects losses for {missing}; got {sorted(losses)}")
        if not want_log and self.fixed_weights is not None:
            total = sum(w * losses[t] for w, t in zip(self.fixed_weights, self.tasks))
            penalty = model.penalty()
            if penalty is not None:
                total = total + penalty
            total.backward()  # type: ignore[union-attr]
            return {**state, "step": state["step"] + 1}, {}
        loss_vec = torch.stack([losses[t] for t in self.tasks])
        step = int(state["step"])  # type: ignore[arg-type]
        log: dict[str, float] = {f"loss/{t}": float(loss_vec[i].detach()) for i, t in enumerate(self.tasks)}
        params = [p for p in model.parameters() if p.requires_grad]

        penalty = model.penalty()
        if penalty is not None:
            log["penalty"] = float(penalty.detach())
            _accumulate(params, torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True))

        fixed, planned, slog = self._plan(loss_vec.detach(), state, step, generator, epoch)
        log.update(slog)
        sstate, bstate = planned["scheme"], planned["balancer"]
        if fixed is not None:
            active = [i for i in range(len(self.tasks)) if float(fixed[i]) != 0.0]
            if active:
                # index the losses themselves, not the stacked vector: inactive heads stay out of the graph
                total = sum(fixed[i] * losses[self.tasks[i]] for i in active)
                _accumulate(params, torch.autograd.grad(total, params, allow_unused=True))  # type: ignore[arg-type]
            weights = fixed
        else:
            weights, bstate = self._balanced(model, loss_vec, params, bstate, step, generator, epoch)  # type: ignore[arg-type]
        log.update({f"weight/{t}": float(w) for t, w in zip(self.tasks, weights)})
        return {"balancer": bstate, "scheme": sstate, "step": torch.tensor(step + 1)}, log

    def _balanced(
        self,
        model: MultiTaskModel,
        loss_vec: Tensor,
        params: list[torch.nn.Parameter],
        bstate: TensorTree,
        step: int,
        generator: torch.Generator | None,
        epoch: int,
    ) -> tuple[Tensor, TensorTree]:
        def call(grads: Tensor | None) -> tuple[Balance, TensorTree]:
            return self.balancer(BalanceInput(losses=loss_vec.detach(), grads=grads, step=step, generator=generator, epoch=epoch), bstate)

        is_shared = self._shared_mask(model, params)
        if not any(is_shared):  # nothing to balance (e.g. soft sharing): plain sum, state unchanged
            _accumulate(params, torch.autograd.grad(loss_vec.sum(), params, allow_unused=True))
            return torch.ones_like(loss_vec.detach()), bstate
        if self.grad_source == "representation":
            return self._balanced_rep(loss_vec, params, is_shared, model, call)
        raw = _jacobian(loss_vec, params, self.jacobian_mode, retain_graph=False)
        t = len(self.tasks)
        jac = [j if j is not None else p.new_zeros((t, *p.shape)) for j, p in zip(raw, params)]
        shared = [j.reshape(t, -1) for j, s in zip(jac, is_shared) if s]
        grads = torch.cat(shared, dim=1) if shared else loss_vec.new_zeros(len(self.tasks), 0)
        balance, new = call(grads)
        w = balance.weights.to(grads)
        shared_flat = balance.shared_gradient(grads)
        shared_params = [p for p, s in zip(params, is_shared) if s]
        out: dict[int, Tensor | None] = dict(zip(map(id, shared_params), _split(shared_flat, shared_params)))
        for p, j, r, s in zip(params, jac, raw, is_shared):
            if not s:  # parameters no loss depends on (heads of tasks not held) keep .grad = None
                out[id(p)] = None if r is None else (w @ j.reshape(t, -1)).view_as(p)
        _accumulate(params, [out[id(p)] for p in params])
        return balance.weights, new

    def _balanced_rep(self, loss_vec: Tensor, params: list[torch.nn.Parameter], is_shared: list[bool], model: MultiTaskModel, call) -> tuple[Tensor, TensorTree]:  # type: ignore[no-untyped-def]
        z = model.shared_representation()
        if z is None:
            raise ValueError(
                f"{type(model).__name__} exposes no single shared representation; use grad_source='parameters'"
            )
        per_task = model.task_representations()
        if per_task is not None and all(t in per_task for t in self.tasks):
            # each alias feeds one head only: one ordinary backward pass through the heads gives every row
            gs = torch.autograd.grad(loss_vec.sum(), [per_task[t] for t in self.tasks], retain_graph=True, allow_unused=True)
            gz = torch.stack([(g if g is not None else torch.zeros_like(z)).reshape(-1) for g in gs])
        else:
            gz = jacobian(loss_vec, [z], self.jacobian_mode, retain_graph=True)[0].reshape(len(self.tasks), -1)
        balance, new = call(gz)
        w = balance.weights.to(loss_vec)
        dz = balance.shared_gradient(gz)
        # one backward pass of  sum_t w_t L_t + <z, dz - sum_t w_t dL_t/dz>  (the bracket detached):
        # heads get sum_t w_t grad L_t, and everything behind z gets J_z^T dz.
        surrogate = (w * loss_vec).sum() + (z * (dz - w.to(gz) @ gz).view_as(z).detach()).sum()
        _accumulate(params, torch.autograd.grad(surrogate, params, allow_unused=True))
        return balance.weights, new
