"""Loss weighting and gradient balancing, one family per file, each citing its paper."""

from fedmtl.mtl.balancers.aligned_mtl import AlignedMTL
from fedmtl.mtl.balancers.base import Balance, BalanceInput, Balancer, GradBalancer, LossBalancer
from fedmtl.mtl.balancers.cagrad import CAGrad
from fedmtl.mtl.balancers.conflict_free import ConFIG
from fedmtl.mtl.balancers.db_mtl import DBMTL
from fedmtl.mtl.balancers.dual_cone import DualProj, UPGrad
from fedmtl.mtl.balancers.dwa import DWA
from fedmtl.mtl.balancers.excess_mtl import ExcessMTL
from fedmtl.mtl.balancers.fairgrad import FairGrad
from fedmtl.mtl.balancers.famo import FAMO
from fedmtl.mtl.balancers.gls import GLS
from fedmtl.mtl.balancers.graddrop import GradDrop
from fedmtl.mtl.balancers.gradnorm import GradNorm
from fedmtl.mtl.balancers.gradvac import GradVac
from fedmtl.mtl.balancers.imtl import IMTL
from fedmtl.mtl.balancers.mgda import MGDA, MGDAUB
from fedmtl.mtl.balancers.moco import MoCo
from fedmtl.mtl.balancers.modo import MoDo
from fedmtl.mtl.balancers.nash_mtl import NashMTL
from fedmtl.mtl.balancers.pcgrad import PCGrad
from fedmtl.mtl.balancers.rlw import RLW
from fedmtl.mtl.balancers.sdmgrad import SDMGrad
from fedmtl.mtl.balancers.stch import STCH
from fedmtl.mtl.balancers.uncertainty import UncertaintyWeighting
from fedmtl.mtl.balancers.weighting import EqualWeighting, StaticWeighting

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "GLS",
    "IMTL",
    "MGDA",
    "MGDAUB",
    "RLW",
    "STCH",
    "AlignedMTL",
    "Balance",
    "BalanceInput",
    "Balancer",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "EqualWeighting",
    "ExcessMTL",
    "FairGrad",
    "GradBalancer",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "LossBalancer",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "StaticWeighting",
    "UPGrad",
    "UncertaintyWeighting",
]
