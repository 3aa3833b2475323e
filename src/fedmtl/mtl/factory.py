"""Build models, balancers and objectives from their configuration (name -> factory registries)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from fedmtl.config import model as model_cfg
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl import balancers as B
from fedmtl.mtl import models as M
from fedmtl.mtl.balancers.base import Balancer
from fedmtl.mtl.models.base import MultiTaskModel
from fedmtl.mtl.models.module import ModelSpecError, ModuleModel
from fedmtl.mtl.models.trunks import CNN1DTrunk, CNN2DTrunk, MLPTrunk
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.mtl.schemes import Alternating, Lagrangian, Scheme, WeightedSum
from fedmtl.tasks import Task


def build_trunk(cfg: model_cfg.Trunk, input_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """A trunk module and the width of the representation it produces."""
    if isinstance(cfg, model_cfg.MLPTrunk):
        t: nn.Module = MLPTrunk(input_shape, cfg.hidden, cfg.activation, cfg.dropout, cfg.norm)
    elif isinstance(cfg, model_cfg.CNN1DTrunk):
        t = CNN1DTrunk(input_shape, cfg.channels, cfg.kernel_size, cfg.hidden)
    elif isinstance(cfg, model_cfg.CNN2DTrunk):
        t = CNN2DTrunk(input_shape, cfg.channels, cfg.hidden)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown trunk config {cfg!r}")
    return t, int(t.out_dim)  # type: ignore[arg-type]


def _hard(cfg: Any, shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return M.HardSharingModel(trunk, dim, tasks, cfg.head_hidden)


def _encoder(cfg: Any, shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return M.HardSharingModel(trunk, dim, tasks, cfg.tower_hidden)


def _mtrl(cfg: Any, shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    trunk, dim = build_trunk(cfg.trunk, shape)
    return M.MTRLModel(trunk, dim, tasks, cfg.adapter_dim, cfg.strength)


MODELS: dict[type, Callable[[Any, Sequence[int], Sequence[Task]], MultiTaskModel]] = {
    model_cfg.HardSharing: _hard,
    model_cfg.SharedEncoder: _encoder,
    model_cfg.SoftSharing: lambda c, s, t: M.SoftSharingModel(lambda: build_trunk(c.trunk, s), t, c.head_hidden, c.strength),
    model_cfg.CrossStitch: lambda c, s, t: M.CrossStitchModel(s, c.hidden, t, c.self_weight),
    model_cfg.MTAN: lambda c, s, t: M.MTANModel(s, c.hidden, t),
    model_cfg.MMoE: lambda c, s, t: M.MMoEModel(s, t, c.num_experts, c.expert_hidden, c.tower_hidden),
    model_cfg.CGC: lambda c, s, t: M.CGCModel(
        s, t, num_shared_experts=c.num_shared_experts, num_task_experts=c.num_task_experts, expert_hidden=c.expert_hidden, tower_hidden=c.tower_hidden
    ),
    model_cfg.PLE: lambda c, s, t: M.PLEModel(s, t, c.levels, c.num_shared_experts, c.num_task_experts, c.expert_hidden, c.tower_hidden),
    model_cfg.DSelectK: lambda c, s, t: M.DSelectKModel(s, t, c.num_experts, c.k, c.expert_hidden, c.tower_hidden, c.gamma),
    model_cfg.LTB: lambda c, s, t: M.LTBModel(s, c.hidden, c.branches, t, c.temperature),
    model_cfg.MTRL: _mtrl,
    model_cfg.Distillation: lambda c, s, t: M.DistillationModel(lambda: build_trunk(c.trunk, s), t, c.strength, c.temperature),
}


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


MODELS[model_cfg.ImportedModel] = _imported  # type: ignore[assignment]


def build_model(cfg: model_cfg.Architecture, input_shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    """The multi-task model an architecture config describes (parameters from torch's default init)."""
    try:
        make = MODELS[type(cfg)]
    except KeyError:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown architecture config {cfg!r}") from None
    return make(cfg, input_shape, tasks)


def _params(cfg: Any) -> dict[str, Any]:
    return cfg.model_dump(exclude={"name"})


BALANCERS: dict[type, Callable[[Any, Sequence[str]], Balancer]] = {
    mtl_cfg.EqualWeighting: lambda c, t: B.EqualWeighting(),
    # weights naming tasks this client does not hold are simply unused here; the
    # experiment checks once that every name is a task of the federation.
    mtl_cfg.StaticWeighting: lambda c, t: B.StaticWeighting([c.weights.get(n, 1.0) for n in t]),
    mtl_cfg.RLW: lambda c, t: B.RLW(),
    mtl_cfg.DWA: lambda c, t: B.DWA(**_params(c)),
    mtl_cfg.UncertaintyWeighting: lambda c, t: B.UncertaintyWeighting(**_params(c)),
    mtl_cfg.GradNorm: lambda c, t: B.GradNorm(**_params(c)),
    mtl_cfg.GLS: lambda c, t: B.GLS(),
    mtl_cfg.FAMO: lambda c, t: B.FAMO(**_params(c)),
    mtl_cfg.STCH: lambda c, t: B.STCH(**_params(c)),
    mtl_cfg.ExcessMTL: lambda c, t: B.ExcessMTL(**_params(c)),
    mtl_cfg.FairGrad: lambda c, t: B.FairGrad(**_params(c)),
    mtl_cfg.MoCo: lambda c, t: B.MoCo(**_params(c)),
    mtl_cfg.PCGrad: lambda c, t: B.PCGrad(),
    mtl_cfg.GradVac: lambda c, t: B.GradVac(**_params(c)),
    mtl_cfg.GradDrop: lambda c, t: B.GradDrop(**_params(c)),
    mtl_cfg.MGDA: lambda c, t: B.MGDA(**_params(c)),
    mtl_cfg.MGDAUB: lambda c, t: B.MGDAUB(**_params(c)),
    mtl_cfg.CAGrad: lambda c, t: B.CAGrad(**_params(c)),
    mtl_cfg.IMTL: lambda c, t: B.IMTL(**_params(c)),
    mtl_cfg.NashMTL: lambda c, t: B.NashMTL(**_params(c)),
    mtl_cfg.AlignedMTL: lambda c, t: B.AlignedMTL(),
    mtl_cfg.DBMTL: lambda c, t: B.DBMTL(**_params(c)),
    mtl_cfg.UPGrad: lambda c, t: B.UPGrad(_pref(c, t)),
    mtl_cfg.DualProj: lambda c, t: B.DualProj(_pref(c, t)),
    mtl_cfg.ConFIG: lambda c, t: B.ConFIG(),
    mtl_cfg.MoDo: lambda c, t: B.MoDo(**_params(c)),
    mtl_cfg.SDMGrad: lambda c, t: B.SDMGrad(**_params(c)),
}


def _pref(cfg: mtl_cfg.UPGrad | mtl_cfg.DualProj, tasks: Sequence[str]) -> list[float] | None:
    """The preference vector in the objective's task order; every task must have a weight."""
    if cfg.pref_vector is None:
        return None
    missing = [t for t in tasks if t not in cfg.pref_vector]
    if missing:
        raise ValueError(f"{cfg.name}.pref_vector has no weight for tasks {missing}; it lists {sorted(cfg.pref_vector)}")
    return [cfg.pref_vector[t] for t in tasks]


def build_balancer(cfg: mtl_cfg.Balancer, tasks: Sequence[str]) -> Balancer:
    """A balancer for the given task order."""
    try:
        make = BALANCERS[type(cfg)]
    except KeyError:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown balancer config {cfg!r}") from None
    return make(cfg, tasks)


def build_scheme(cfg: mtl_cfg.Scheme, tasks: Sequence[str]) -> Scheme:
    """A joint-optimisation scheme over ``tasks``."""
    if isinstance(cfg, mtl_cfg.Alternating):
        return Alternating(tasks, cfg.every)
    if isinstance(cfg, mtl_cfg.Lagrangian):
        return Lagrangian(tasks, cfg.main, cfg.constraints, cfg.dual_lr, cfg.init_multiplier)
    return WeightedSum()


def build_objective(cfg: mtl_cfg.MTLConfig, tasks: Sequence[str]) -> MultiTaskObjective:
    """The local objective over ``tasks`` (a client's own task list)."""
    return MultiTaskObjective(
        build_balancer(cfg.balancer, tasks),
        tasks,
        scheme=build_scheme(cfg.scheme, tasks),
        grad_source=cfg.gradients.source,
        jacobian_mode=cfg.gradients.jacobian,
    )
