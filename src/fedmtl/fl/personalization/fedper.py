"""FedPer: a federated trunk ("base layers") with personal task heads.

Arivazhagan, Aggarwal, Singh, Choudhary. "Federated Learning with Personalization Layers", arXiv:1912.00818, 2019.
"""

from __future__ import annotations

from fedmtl.config import algorithm as acfg
from fedmtl.fl.personalization._common import KeepPrivate
from fedmtl.mtl import MultiTaskModel
from fedmtl.registry import register


class FedPer(KeepPrivate):
    """Task heads (groups ``task:<name>``) stay on the client; only the shared trunk is uploaded."""

    name = "fedper"

    def private(self, model: MultiTaskModel, name: str) -> bool:
        return model.group_of(name).startswith("task:")


register("algorithm", "fedper", lambda cfg, make_model: FedPer(), acfg.FedPerAlgorithm)
