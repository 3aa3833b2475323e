"""Multi-task learning: models, loss balancing and joint optimisation, usable with or without FL."""

from fedmtl.mtl.backward import backward
from fedmtl.mtl.balancers.base import Balance, BalanceInput, Balancer
from fedmtl.mtl.factory import build_balancer, build_model, build_objective, build_scheme
from fedmtl.mtl.models.base import LOCAL, SHARED, MultiTaskModel, task_group
from fedmtl.mtl.models.hard_sharing import HardSharingModel
from fedmtl.mtl.objective import MultiTaskObjective
from fedmtl.mtl.schemes import Alternating, Lagrangian, WeightedSum

__all__ = [
    "LOCAL",
    "SHARED",
    "Balance",
    "BalanceInput",
    "Balancer",
    "HardSharingModel",
    "MultiTaskModel",
    "MultiTaskObjective",
    "Alternating",
    "Lagrangian",
    "WeightedSum",
    "backward",
    "build_balancer",
    "build_model",
    "build_objective",
    "build_scheme",
    "task_group",
]
