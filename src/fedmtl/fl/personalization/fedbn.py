"""FedBN: normalisation layers stay local.

Li, Jiang, Zhang, Kamp, Dou. "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021.
"""

from __future__ import annotations

from torch import nn

from fedmtl.config import algorithm as acfg
from fedmtl.fl.personalization._common import KeepPrivate
from fedmtl.mtl import MultiTaskModel
from fedmtl.registry import register

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def norm_parameter_names(model: MultiTaskModel) -> set[str]:
    """Names of the parameters that belong to normalisation layers (by module type, not by name)."""
    out = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            out |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
    return out


class FedBN(KeepPrivate):
    """Parameters of normalisation layers private; everything else as FedAvg.

    On a model without normalisation layers (the built-in MLP / CNN trunks today) this is FedAvg.
    Running statistics (buffers) are not part of the federated state in fedmtl, so only the affine
    parameters are personalised.
    """

    name = "fedbn"
    #: the model the norm-parameter names were last collected from, and those names: ``private`` is asked
    #: for every parameter several times per client and round, and walking the modules each time is slow
    _seen: tuple[MultiTaskModel, set[str]] | None = None

    def private(self, model: MultiTaskModel, name: str) -> bool:
        if self._seen is None or self._seen[0] is not model:
            self._seen = (model, norm_parameter_names(model))
        return name in self._seen[1]


register("algorithm", "fedbn", lambda cfg, make_model: FedBN(), acfg.FedBNAlgorithm)
