"""Personalisation, client-drift correction and federated multi-task learning, one method per file.

Every method is an :class:`~fedmtl.fl.algorithm.Algorithm` built from the ``algorithm`` config.
"""

from fedmtl.fl.personalization.apfl import APFL
from fedmtl.fl.personalization.ditto import Ditto
from fedmtl.fl.personalization.fedbn import FedBN
from fedmtl.fl.personalization.fedem import FedEM
from fedmtl.fl.personalization.fedper import FedPer
from fedmtl.fl.personalization.fedprox import FedProx
from fedmtl.fl.personalization.fedrep import FedRep
from fedmtl.fl.personalization.ifca import IFCA
from fedmtl.fl.personalization.local import LocalOnly
from fedmtl.fl.personalization.mocha import Mocha, omega_update
from fedmtl.fl.personalization.pfedme import PFedMe
from fedmtl.fl.personalization.scaffold import Scaffold

__all__ = ["APFL", "IFCA", "Ditto", "FedBN", "FedEM", "FedPer", "FedProx", "FedRep", "LocalOnly", "Mocha", "PFedMe", "Scaffold", "omega_update"]
