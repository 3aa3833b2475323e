"""One call on any module: ``backward(losses, shared=params, balancer=...)``.

The balancer protocol (:mod:`fedmtl.mtl.balancers.base`) without a :class:`MultiTaskModel`, ``Task``
objects or an objective (the shape of TorchJD's ``mtl_backward``): the shared parameters receive the
balanced update and every other parameter a loss reaches receives ``sum_t w_t grad L_t`` with the
balancer's loss weights (``w_t = 1`` for gradient balancers: each loss's own gradient).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import Tensor

from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balance, BalanceInput, Balancer
from fedmtl.mtl.factory import build_balancer
from fedmtl.mtl.objective import jacobian
from fedmtl.tree import TensorTree, flatten, unflatten

BalancerSpec = str | Mapping[str, Any] | Balancer
Losses = Mapping[str, Tensor | None] | Sequence[Tensor | None]

_CONFIG = TypeAdapter(mtl_cfg.Balancer)


def backward(
    losses: Losses,
    shared: Iterable[Tensor],
    balancer: BalancerSpec = "equal",
    state: TensorTree | None = None,
    *,
    generator: torch.Generator | None = None,
    epoch: int = 0,
) -> TensorTree:
    """Accumulate the balanced multi-task gradient into ``.grad`` (as ``Tensor.backward`` does).

    Args:
        losses: ``{task: scalar loss}`` or a list of scalar losses (tasks ``"0"``, ``"1"``, ...). A task
            whose loss is ``None`` (no labels in this batch) is left out of the step; its entries of
            the balancer's state are kept as they are. Keep the same tasks, in the same order, from
            call to call (``None`` for the missing ones).
        shared: the shared parameters (leaf tensors); they receive the balancer's combination or
            direction of the per-task gradients.
        balancer: a name (``"pcgrad"``), a config dict (``{"name": "cagrad", "c": 0.5}``, the fields of
            ``mtl.balancer`` in a run's configuration) or a balancer object.
        state: what the previous call returned; ``None`` starts afresh.
        generator: randomness for stochastic balancers (RLW, GradDrop, PCGrad's order).
        epoch: the epoch (DWA averages losses per epoch).

    Returns:
        The next state: ``{"balancer": <the balancer's state>, "step": <steps taken>}``.

    Raises:
        ValueError: a loss that is not a scalar with a gradient, a shared tensor that is not a leaf
            requiring grad, a state made for another number of tasks, or an unknown balancer.
    """
    names, values = _named(losses)
    present = [i for i, v in enumerate(values) if v is not None]
    params = _shared(shared)
    make = _factory(balancer)
    full = make(names)
    if getattr(full, "forced_source", None) == "representation":
        raise ValueError(f"{type(full).__name__} balances representation gradients; use MultiTaskObjective with a MultiTaskModel")
    if state is None:
        state = {"balancer": full.init(len(names)), "step": torch.zeros((), dtype=torch.long)}
    elif not isinstance(state, Mapping) or set(state) != {"balancer", "step"}:
        raise ValueError("state must be what the previous call of backward returned ({'balancer': ..., 'step': ...}) or None")
    axes = _task_axes(full, len(names))
    _check_state(state["balancer"], axes, len(names))
    if not present:
        return state
    sub_names = [names[i] for i in present]
    b = full if len(present) == len(names) else make(sub_names)
    loss_vec = torch.stack([values[i].reshape(()) for i in present])  # type: ignore[union-attr]
    step = int(state["step"])
    sub_state = state["balancer"] if b is full else _restrict(state["balancer"], axes, present)

    def call(grads: Tensor | None) -> tuple[Balance, TensorTree]:
        return b(BalanceInput(loss_vec.detach(), grads, step, generator, epoch), sub_state)

    others = _reached(loss_vec, params)
    if b.requires == "losses":
        balance, new = call(None)
        weights = _checked(balance.weights, len(present), b)
        total = (weights.to(loss_vec) * loss_vec).sum()
        _accumulate([*params, *others], torch.autograd.grad(total, [*params, *others], allow_unused=True))
    else:
        rows = jacobian(loss_vec, params, retain_graph=bool(others))
        grads = torch.cat([j.reshape(len(present), -1) for j in rows], 1)
        balance, new = call(grads)
        weights = _checked(balance.weights, len(present), b)
        flat = balance.shared_gradient(grads)
        _accumulate(params, list(torch.split(flat, [p.numel() for p in params])))
        if others:
            total = (weights.to(loss_vec) * loss_vec).sum()
            _accumulate(others, torch.autograd.grad(total, others, allow_unused=True))
    merged = new if b is full else _merge(state["balancer"], new, axes, present)
    return {"balancer": merged, "step": torch.tensor(step + 1)}


def _named(losses: Losses) -> tuple[list[str], list[Tensor | None]]:
    items = list(losses.items()) if isinstance(losses, Mapping) else [(str(i), v) for i, v in enumerate(losses)]
    if not items:
        raise ValueError("losses is empty: give at least one task's loss")
    for name, value in items:
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss {name!r} must be a scalar tensor, got {type(value).__name__} {getattr(value, 'shape', '')}")
        if not value.requires_grad:
            raise ValueError(f"loss {name!r} does not require grad (is it computed from the parameters?)")
    return [str(n) for n, _ in items], [v for _, v in items]


def _shared(shared: Iterable[Tensor]) -> list[Tensor]:
    out: list[Tensor] = []
    seen: set[int] = set()
    for p in shared:
        if not isinstance(p, Tensor) or not p.is_leaf or not p.requires_grad:
            raise ValueError(f"shared must hold leaf tensors that require grad (parameters), got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError("shared is empty: give the shared parameters (e.g. model.trunk.parameters())")
    return out


def _factory(spec: BalancerSpec) -> Any:
    """A function from the task names to a balancer for them."""
    if isinstance(spec, str | Mapping):
        raw = {"name": spec} if isinstance(spec, str) else dict(spec)
        try:
            cfg = _CONFIG.validate_python(raw)
        except Exception as e:  # pydantic's message names the field and the allowed values
            raise ValueError(f"invalid balancer {raw!r}: {e}") from None
        return lambda names: build_balancer(cfg, names)
    if not (hasattr(spec, "requires") and hasattr(spec, "init") and callable(spec)):
        raise ValueError(f"balancer must be a name, a config dict or a balancer object, got {type(spec).__name__}")
    return lambda names: spec


def _reached(loss_vec: Tensor, shared: list[Tensor]) -> list[Tensor]:
    """The leaf tensors requiring grad that ``loss_vec`` depends on, other than ``shared``."""
    skip = {id(p) for p in shared}
    out: list[Tensor] = []
    seen: set[int] = set()
    stack = [loss_vec.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if isinstance(var, Tensor) and id(var) not in skip:
            skip.add(id(var))
            out.append(var)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return out


def _checked(weights: Tensor, k: int, b: Balancer) -> Tensor:
    if weights.shape != (k,):
        raise ValueError(
            f"{type(b).__name__} returned {tuple(weights.shape)} weights for {k} tasks; a balancer object built "
            "for a fixed task list (static weights) cannot skip tasks: pass its name or config instead"
        )
    return weights


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        g = g.detach().view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g


# -- the balancer's state for a subset of the tasks ------------------------------------------------


def _task_axes(b: Balancer, t: int) -> dict[str, tuple[int, ...]]:
    """Per state entry, the axes whose size is the number of tasks (those that grow from ``t`` to ``t + 1``)."""
    small = flatten(b.init(t))
    try:
        large = flatten(b.init(t + 1))
    except ValueError:  # built for exactly t tasks (static weights): its state has no task axis
        return {k: () for k in small}
    return {k: tuple(a for a, (x, y) in enumerate(zip(v.shape, large[k].shape)) if x != y) for k, v in small.items()}


def _check_state(bstate: TensorTree, axes: dict[str, tuple[int, ...]], t: int) -> None:
    flat = flatten(bstate)
    for key, ax in axes.items():
        if key not in flat:
            raise ValueError(f"state has no balancer entry {key!r}: was it made by another balancer?")
        if any(flat[key].shape[a] != t for a in ax):
            raise ValueError(f"state entry {key!r} {tuple(flat[key].shape)} was made for another number of tasks than {t}")


def _restrict(bstate: TensorTree, axes: dict[str, tuple[int, ...]], present: list[int]) -> TensorTree:
    out = {}
    for key, value in flatten(bstate).items():
        idx = torch.tensor(present, device=value.device)
        for a in axes.get(key, ()):
            value = value.index_select(a, idx)
        out[key] = value
    return unflatten(out)


def _merge(old: TensorTree, new: TensorTree, axes: dict[str, tuple[int, ...]], present: list[int]) -> TensorTree:
    """``old`` with the present tasks' entries replaced by ``new``'s (task-free entries taken from ``new``)."""
    flat_old, out = flatten(old), {}
    for key, value in flatten(new).items():
        ax = axes.get(key, ())
        if not ax:
            out[key] = value
            continue
        base = flat_old[key]
        t = base.shape[ax[0]]
        shape = [t if a in ax else n for a, n in enumerate(value.shape)]
        full = base.to(value) if list(base.shape) == shape else value.new_zeros(shape)
        out[key] = _scatter(full.clone(), value, ax, present)
    return unflatten(out)


def _scatter(full: Tensor, part: Tensor, axes: tuple[int, ...], present: list[int]) -> Tensor:
    """``full`` with ``full[present x present ...]`` (along ``axes``) set to ``part``."""
    if not axes:
        return part
    a, rest = axes[0], tuple(x - 1 for x in axes[1:])
    for pos, i in enumerate(present):
        full.select(a, i).copy_(_scatter(full.select(a, i).clone(), part.select(a, pos), rest, present))
    return full
