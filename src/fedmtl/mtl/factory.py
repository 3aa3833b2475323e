"""Build models, balancers, schemes and objectives from their configuration, through :mod:`fedmtl.registry`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from torch import nn

from fedmtl import registry
from fedmtl.config import model as model_cfg
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balancer
from fedmtl.mtl.models.base import MultiTaskModel
from fedmtl.mtl.models.module import ModelSpecError, ModuleModel
from fedmtl.mtl.models.trunks import build_trunk
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.mtl.schemes import Scheme
from fedmtl.registry import register
from fedmtl.tasks import Task

__all__ = ["as_model", "build_balancer", "build_model", "build_objective", "build_scheme", "build_trunk", "import_factory"]


def as_model(
    model: nn.Module | Callable[..., nn.Module],
    input_shape: Sequence[int],
    tasks: Sequence[Task],
    task_params: Mapping[str, Sequence[str]] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> MultiTaskModel:
    """A user's model as a :class:`MultiTaskModel`: a module (used as it is: pass a copy to keep yours
    untouched), or a factory called with ``kwargs`` (plus ``input_shape`` / ``tasks`` when it names them).
    A :class:`MultiTaskModel` is returned as it is; any other module is wrapped (:class:`ModuleModel`)."""
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise ModelSpecError(f"a model must be a torch.nn.Module or a callable returning one, got {type(model).__name__}")
        args = dict(kwargs or {})
        try:
            accepted = inspect.signature(model).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            accepted = {}  # type: ignore[assignment]
        for key, value in (("input_shape", tuple(input_shape)), ("tasks", tuple(tasks))):
            if key in accepted and key not in args:
                args[key] = value
        model = model(**args)
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
    if isinstance(model, MultiTaskModel):
        return model
    return ModuleModel(model, tasks, task_params)


def import_factory(target: str) -> Callable[..., nn.Module]:
    """The object ``'package.module:attribute'`` names (a model factory or class)."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"model.target {target!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"model.target {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model.target {target!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _imported(cfg: model_cfg.ImportedModel, shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    return as_model(import_factory(cfg.target), shape, tasks, cfg.task_params, cfg.kwargs)


register("model", "import", _imported, model_cfg.ImportedModel)


def build_model(cfg: BaseModel, input_shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    """The multi-task model an architecture config describes (any registered model, by ``cfg.name``;
    parameters from torch's default init). A factory that returns a plain module is wrapped (:func:`as_model`)."""
    return as_model(registry.build("model", cfg, input_shape, tasks), input_shape, tasks)


def build_balancer(cfg: BaseModel, tasks: Sequence[str]) -> Balancer:
    """A balancer for the given task order (any registered balancer, by ``cfg.name``)."""
    balancer: Balancer = registry.build("balancer", cfg, tasks)
    return balancer


def build_scheme(cfg: BaseModel, tasks: Sequence[str]) -> Scheme:
    """A joint-optimisation scheme over ``tasks`` (any registered scheme, by ``cfg.name``)."""
    scheme: Scheme = registry.build("scheme", cfg, tasks)
    return scheme


def build_objective(cfg: mtl_cfg.MTLConfig, tasks: Sequence[str]) -> MultiTaskObjective:
    """The local objective over ``tasks`` (a client's own task list)."""
    return MultiTaskObjective(
        build_balancer(cfg.balancer, tasks),
        tasks,
        scheme=build_scheme(cfg.scheme, tasks),
        grad_source=cfg.gradients.source,
        jacobian_mode=cfg.gradients.jacobian,
    )
