"""Multi-task models: hard, soft and feature sharing, experts, branching and shared knowledge."""

from fedmtl.mtl.models.base import LOCAL, SHARED, MultiTaskModel, task_group
from fedmtl.mtl.models.cross_stitch import CrossStitchModel
from fedmtl.mtl.models.distillation import DistillationModel
from fedmtl.mtl.models.dselect_k import DSelectKModel
from fedmtl.mtl.models.hard_sharing import HardSharingModel
from fedmtl.mtl.models.ltb import LTBModel
from fedmtl.mtl.models.moe import CGCModel, MMoEModel, PLEModel
from fedmtl.mtl.models.mtan import MTANModel
from fedmtl.mtl.models.mtrl import MTRLModel
from fedmtl.mtl.models.soft_sharing import SoftSharingModel

__all__ = [
    "LOCAL",
    "SHARED",
    "CGCModel",
    "CrossStitchModel",
    "DSelectKModel",
    "DistillationModel",
    "HardSharingModel",
    "LTBModel",
    "MMoEModel",
    "MTANModel",
    "MTRLModel",
    "MultiTaskModel",
    "PLEModel",
    "SoftSharingModel",
    "task_group",
]
