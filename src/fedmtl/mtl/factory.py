"""Build models, balancers and objectives from their configuration (name -> factory registries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from fedmtl.config import model as model_cfg
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl import balancers as B
from fedmtl.mtl import models as M
from fedmtl.mtl.balancers.base import Balancer
from fedmtl.mtl.models.base import MultiTaskModel
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
