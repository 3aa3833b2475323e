"""Configuration of the federated algorithm's client side (FedAvg, FedProx, SCAFFOLD, personalisation, FMTL).

Each method is a small model tagged by ``name``; ``algorithm: {name: ditto, lam: 0.1}`` selects one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, SerializeAsAny

from fedmtl.config.base import Count, Width
from fedmtl.config.registered import ComponentConfig, Registered


class FedAvgAlgorithm(ComponentConfig):
    """Plain federated averaging: every client trains the global model on its own tasks."""

    name: Literal["fedavg"] = "fedavg"


class FedProxAlgorithm(ComponentConfig):
    """FedProx (Li et al., 2020): local loss plus ``mu/2 ||w - w_global||^2``; ``mu=0`` is FedAvg."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(default=0.01, ge=0, description="Proximal weight.")


class ScaffoldAlgorithm(ComponentConfig):
    """SCAFFOLD (Karimireddy et al., 2020), option II control variates; needs ``client.optimizer: sgd``.

    The global step size is ``server.optimizer.lr``.
    """

    name: Literal["scaffold"] = "scaffold"


class LocalOnlyAlgorithm(ComponentConfig):
    """Reference point: each client trains only on its own data; nothing is sent or aggregated."""

    name: Literal["local"] = "local"


class FedPerAlgorithm(ComponentConfig):
    """FedPer (Arivazhagan et al., 2019): global trunk, task heads kept on the client, never uploaded."""

    name: Literal["fedper"] = "fedper"


class FedRepAlgorithm(ComponentConfig):
    """FedRep (Collins et al., 2021): local heads trained ``head_epochs`` with the trunk frozen, then the trunk."""

    name: Literal["fedrep"] = "fedrep"
    head_epochs: Count = Field(default=5, description="Head-only epochs before the trunk's client.epochs.")


class FedBNAlgorithm(ComponentConfig):
    """FedBN (Li et al., 2021): normalisation-layer parameters stay local (a no-op on trunks without them)."""

    name: Literal["fedbn"] = "fedbn"


class DittoAlgorithm(ComponentConfig):
    """Ditto (Li et al., 2021): a personal model pulled to the global one by ``lam/2 ||v - w||^2``."""

    name: Literal["ditto"] = "ditto"
    lam: float = Field(default=0.1, ge=0, description="Pull of the personal model towards the global one.")
    personal_epochs: Count | None = Field(default=None, description="Epochs on the personal model (default client.epochs).")


class APFLAlgorithm(ComponentConfig):
    """APFL (Deng et al., 2020): personal model ``alpha * v + (1 - alpha) * w``, ``alpha`` fixed or learned.

    Fixed by default: ``alpha`` learned on the training loss drifts towards 1 (the local model fits its
    own training rows best) and loses what the global model adds; on the personalisation benchmark a
    fixed 0.4-0.5 beat every learned setting on both partitions (docs/personalization.md).
    """

    name: Literal["apfl"] = "apfl"
    alpha: float = Field(default=0.5, ge=0, le=1, description="Mixing weight of the local model (its initial value when alpha_lr > 0).")
    alpha_lr: float = Field(default=0.0, ge=0, description="Step size of alpha (0 keeps it fixed; Deng et al.'s adaptive alpha: > 0).")


class PFedMeAlgorithm(ComponentConfig):
    """pFedMe (Dinh et al., 2020): personal models as Moreau envelopes of the local loss around the global model."""

    name: Literal["pfedme"] = "pfedme"
    lam: PositiveFloat = Field(default=15.0, description="Moreau-envelope regularisation strength.")
    inner_steps: Count = Field(default=5, description="Gradient steps on the personal model per minibatch.")
    personal_lr: PositiveFloat = Field(default=0.05, description="Step size of those inner steps.")


class IFCAAlgorithm(ComponentConfig):
    """IFCA (Ghosh et al., 2020): clients pick the best of ``clusters`` models by local loss."""

    name: Literal["ifca"] = "ifca"
    clusters: Width = Field(default=2, le=64)
    personal_model: Literal["trained", "cluster"] = Field(
        default="trained",
        description=(
            "A client's model at evaluation: 'trained' = the cluster model it trained in its last round; "
            "'cluster' = the current cluster model with the lowest loss on its training data (the paper's inference rule)."
        ),
    )


class FedEMAlgorithm(ComponentConfig):
    """FedEM (Marfoq et al., 2021): each client's distribution a mixture of ``components`` shared models."""

    name: Literal["fedem"] = "fedem"
    components: int = Field(default=3, ge=2, le=16)
    gate: bool = Field(
        default=True,
        description=(
            "Drop the paper's Assumption 2 (every component has the same input distribution): a federated gate "
            "network s(x) ~ log p_m(x), of the experiment's architecture, makes the mixture weights depend on the "
            "input (w_m(x) = softmax_m(log pi_m + s_m(x)), Bayes' rule for the same mixture model). Needed under "
            "label skew, where the components split the classes. false: Marfoq et al.'s x-independent mixture, as published."
        ),
    )


class MochaAlgorithm(ComponentConfig):
    """MOCHA-style federated MTL (Smith et al., 2017): personal heads coupled by a learned Omega."""

    name: Literal["mocha"] = "mocha"
    lam: float = Field(default=0.01, ge=0, description="Weight of the task-relationship regulariser tr(W Omega^-1 W^T).")
    eps: float = Field(default=0.1, gt=0, description="Ridge added to W W^T, relative to its mean diagonal, before the square root.")


#: ``Algorithm``: any registered algorithm (``fedmtl list algorithm``), chosen by ``name``
Algorithm = Annotated[SerializeAsAny[ComponentConfig], Registered("algorithm")]
