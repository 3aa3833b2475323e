"""Build models, balancers and objectives from their configuration."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedmtl.config import model as model_cfg
from fedmtl.config import mtl as mtl_cfg
from fedmtl.mtl.balancers.base import Balancer
from fedmtl.mtl.balancers.weighting import EqualWeighting, StaticWeighting
from fedmtl.mtl.models.base import MultiTaskModel
from fedmtl.mtl.models.hard_sharing import HardSharingModel
from fedmtl.mtl.models.trunks import CNN1DTrunk, CNN2DTrunk, MLPTrunk
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.tasks import Task


def build_trunk(cfg: model_cfg.Trunk, input_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """A trunk module and the width of the representation it produces."""
    if isinstance(cfg, model_cfg.MLPTrunk):
        t: nn.Module = MLPTrunk(input_shape, cfg.hidden, cfg.activation, cfg.dropout)
    elif isinstance(cfg, model_cfg.CNN1DTrunk):
        t = CNN1DTrunk(input_shape, cfg.channels, cfg.kernel_size, cfg.hidden)
    elif isinstance(cfg, model_cfg.CNN2DTrunk):
        t = CNN2DTrunk(input_shape, cfg.channels, cfg.hidden)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown trunk config {cfg!r}")
    return t, int(t.out_dim)  # type: ignore[arg-type]


def build_model(cfg: model_cfg.Architecture, input_shape: Sequence[int], tasks: Sequence[Task]) -> MultiTaskModel:
    """The multi-task model an architecture config describes (parameters from torch's default init)."""
    if isinstance(cfg, model_cfg.HardSharing):
        trunk, dim = build_trunk(cfg.trunk, input_shape)
        return HardSharingModel(trunk, dim, tasks, cfg.head_hidden)
    raise TypeError(f"unknown architecture config {cfg!r}")  # pragma: no cover


def build_balancer(cfg: mtl_cfg.Balancer, tasks: Sequence[str]) -> Balancer:
    """A balancer for the given task order."""
    if isinstance(cfg, mtl_cfg.EqualWeighting):
        return EqualWeighting()
    if isinstance(cfg, mtl_cfg.StaticWeighting):
        # weights naming tasks this client does not hold are simply unused here; the
        # experiment checks once that every name is a task of the federation.
        return StaticWeighting([cfg.weights.get(t, 1.0) for t in tasks])
    raise TypeError(f"unknown balancer config {cfg!r}")  # pragma: no cover


def build_objective(cfg: mtl_cfg.MTLConfig, tasks: Sequence[str]) -> MultiTaskObjective:
    """The local objective over ``tasks`` (a client's own task list)."""
    return MultiTaskObjective(build_balancer(cfg.balancer, tasks), tasks)
