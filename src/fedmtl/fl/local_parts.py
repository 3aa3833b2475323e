"""The parts of a local step that every trainer shares (the sequential one, DP-SGD's, the vectorised
engine's): what local training returns, which parameters a client holds, loading values into the one
model instance, the client's own normalisation statistics, the optimiser, and the result of a step.

Kept apart from :mod:`fedmtl.fl.client` so that DP-SGD's trainer (:mod:`fedmtl.fl.dp_sgd_client`) and the
sequential trainer need not import each other.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fedmtl.fl.client_state import ClientState
from fedmtl.mtl import LOCAL, SHARED, MultiTaskModel, task_group
from fedmtl.tree import TensorTree

__all__ = [
    "LocalResult",
    "client_buffers",
    "default_buffers",
    "finish_local",
    "held_parameter_names",
    "load_buffers",
    "load_parameters",
    "mean_buffers",
    "norm_buffer_names",
]


@dataclass(frozen=True)
class LocalResult:
    """What local training produced.

    Attributes:
        params: the trained values of every parameter this client holds (shared, its task heads, local).
        metrics: mean training loss per task (``loss/<task>``) and the number of steps.
        state: the client's persistent state for its next participation (objective state, local parameters,
            the algorithm's own); what it leaves empty carries over from the client's state before (:meth:`ClientState.over`).
        outbox: extra uploads for the algorithm's server step (SCAFFOLD's ``Δc``, FedEM's components; see
            :mod:`fedmtl.fl.algorithm`), encoded by the client node into its reply; empty for most algorithms.
    """

    params: dict[str, Tensor]
    metrics: dict[str, float]
    state: ClientState = field(default_factory=ClientState)
    outbox: TensorTree = field(default_factory=dict)


#: model -> task set -> the names it holds: a model's parameters and groups never change, and every step of a
#: client's path asks (the trainer, the engines, the algorithms, the round's layout), so each task set is walked once
_HELD: weakref.WeakKeyDictionary[MultiTaskModel, dict[tuple[str, ...], tuple[str, ...]]] = weakref.WeakKeyDictionary()


def held_parameter_names(model: MultiTaskModel, tasks: tuple[str, ...] | list[str]) -> list[str]:
    """The parameters a client with these tasks trains: shared, its tasks' own, and local ones (in the model's order).

    Computed once per model and task set (a new list each call: callers may change theirs).
    """
    by_tasks = _HELD.setdefault(model, {})
    key = tuple(tasks)
    if key not in by_tasks:
        keep = {SHARED, LOCAL} | {task_group(t) for t in tasks}
        by_tasks[key] = tuple(n for n, _ in model.named_parameters() if model.group_of(n) in keep)
    return list(by_tasks[key])


def load_parameters(model: MultiTaskModel, values: Mapping[str, Tensor]) -> None:
    """Copy values into the model's parameters in place (no new tensors, no autograd history)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, v in values.items():
            params[name].copy_(v)


def norm_buffer_names(model: torch.nn.Module) -> list[str]:
    """The running statistics of the model's BatchNorm layers (``running_mean``, ``running_var``, ``num_batches_tracked``).

    They are client state, never federated: each client trains and evaluates with its own (FedBN).
    """
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out += [f"{prefix}.{n}" if prefix else n for n, b in module.named_buffers(recurse=False) if b is not None]
    return out


def default_buffers(model: torch.nn.Module) -> dict[str, Tensor]:
    """Freshly initialised running statistics (mean 0, variance 1, no batches seen): a client's before it trains."""
    out: dict[str, Tensor] = {}
    buffers = dict(model.named_buffers())
    for n in norm_buffer_names(model):
        b = buffers[n]
        out[n] = torch.ones_like(b) if n.endswith("running_var") else torch.zeros_like(b)
    return out


def client_buffers(model: torch.nn.Module, state: ClientState) -> dict[str, Tensor]:
    """The running statistics a client uses: its own (``state.buffers``), else the initial ones."""
    return {**default_buffers(model), **state.buffers}


def load_buffers(model: torch.nn.Module, values: Mapping[str, Tensor]) -> None:
    """Copy values into the model's buffers in place."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, v in values.items():
            buffers[name].copy_(v)


def mean_buffers(model: torch.nn.Module, states: Sequence[ClientState]) -> dict[str, Tensor]:
    """The mean of the clients' running statistics (``num_batches_tracked`` summed); the initial ones if none has any."""
    own = [s.buffers for s in states if s.buffers]
    out = default_buffers(model)
    if not own:
        return out
    for n in out:
        stacked = torch.stack([b[n] for b in own])
        out[n] = stacked.sum(0) if n.endswith("num_batches_tracked") else stacked.float().mean(0).to(out[n].dtype)
    return out


def finish_local(
    model: MultiTaskModel, names: Sequence[str], loss_sums: Mapping[str, Tensor | float], steps: int, state: ClientState
) -> LocalResult:
    """The result of local training: trained values, mean losses, and the next state (``state``, the trainer's
    objective and privacy slots, with the local parameters and BatchNorm statistics set)."""
    named = dict(model.named_parameters())
    trained = {n: named[n].detach().clone() for n in names}
    metrics = {f"loss/{t}": float(s) / max(steps, 1) for t, s in loss_sums.items()}
    metrics["steps"] = float(steps)
    new_state = state
    local = {n: v for n, v in trained.items() if model.group_of(n) == LOCAL}
    if local:
        new_state = replace(new_state, local=local)
    bn = norm_buffer_names(model)
    if bn:  # the client's own running statistics (FedBN): persisted, never uploaded
        buffers = dict(model.named_buffers())
        new_state = replace(new_state, buffers={n: buffers[n].detach().clone() for n in bn})
    return LocalResult(trained, metrics, new_state)
