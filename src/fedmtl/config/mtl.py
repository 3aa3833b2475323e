"""Configuration of the local multi-task objective: how task losses become one update.

``mtl.balancer`` picks a loss weighting / gradient balancing method by ``name``, ``mtl.scheme`` the
joint-optimisation scheme, ``mtl.gradients`` where per-task gradients are taken. Every field is
bounded; pydantic's messages name the field and the allowed values.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, SerializeAsAny, model_validator

from fedmtl import registry
from fedmtl.config.base import Count, StrictModel
from fedmtl.config.registered import ComponentConfig, Registered

Fraction = Annotated[float, Field(gt=0, le=1)]


class EqualWeighting(ComponentConfig):
    """Sum of the task losses, each with weight 1."""

    name: Literal["equal"] = "equal"


class StaticWeighting(ComponentConfig):
    """Fixed weights: f1 + lambda * f2, and so on. Tasks not listed get weight 1."""

    name: Literal["static"] = "static"
    weights: dict[str, PositiveFloat]


class RLW(ComponentConfig):
    """Random loss weighting (Lin et al., 2022)."""

    name: Literal["rlw"] = "rlw"


class DWA(ComponentConfig):
    """Dynamic weight average (Liu et al., 2019)."""

    name: Literal["dwa"] = "dwa"
    temperature: PositiveFloat = 2.0


class UncertaintyWeighting(ComponentConfig):
    """Homoscedastic uncertainty weighting (Kendall et al., 2018)."""

    name: Literal["uw"] = "uw"
    lr: PositiveFloat = 0.05


class GradNorm(ComponentConfig):
    """Gradient normalisation (Chen et al., 2018)."""

    name: Literal["gradnorm"] = "gradnorm"
    alpha: NonNegativeFloat = 1.5
    lr: PositiveFloat = 0.025


class GLS(ComponentConfig):
    """Geometric loss strategy (Chennupati et al., 2019)."""

    name: Literal["gls"] = "gls"


class FAMO(ComponentConfig):
    """Fast adaptive multitask optimisation (Liu et al., 2023)."""

    name: Literal["famo"] = "famo"
    lr: PositiveFloat = 0.025
    gamma: NonNegativeFloat = 0.001


class STCH(ComponentConfig):
    """Smooth Tchebycheff scalarisation (Lin et al., 2024)."""

    name: Literal["stch"] = "stch"
    mu: PositiveFloat = 1.0
    warmup_steps: Count = 20


class ExcessMTL(ComponentConfig):
    """Excess-risk weighting (He et al., 2024)."""

    name: Literal["excess_mtl"] = "excess_mtl"
    robust_step_size: PositiveFloat = 0.01


class FairGrad(ComponentConfig):
    """Alpha-fair gradient aggregation (Ban & Ji, 2024)."""

    name: Literal["fairgrad"] = "fairgrad"
    alpha: PositiveFloat = 1.0


class MoCo(ComponentConfig):
    """Momentum-corrected MGDA (Fernando et al., 2023)."""

    name: Literal["moco"] = "moco"
    beta: PositiveFloat = 0.5
    beta_sigma: NonNegativeFloat = 0.5
    gamma: PositiveFloat = 0.1
    gamma_sigma: NonNegativeFloat = 0.5
    rho: NonNegativeFloat = 0.0


class PCGrad(ComponentConfig):
    """Projecting conflicting gradients (Yu et al., 2020)."""

    name: Literal["pcgrad"] = "pcgrad"


class GradVac(ComponentConfig):
    """Gradient vaccine (Wang et al., 2021)."""

    name: Literal["gradvac"] = "gradvac"
    beta: Fraction = 0.5


class GradDrop(ComponentConfig):
    """Gradient sign dropout (Chen et al., 2020)."""

    name: Literal["graddrop"] = "graddrop"
    leak: float = Field(default=0.0, ge=0, le=1)


Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDA(ComponentConfig):
    """Multiple-gradient descent (Sener & Koltun, 2018) on parameter gradients."""

    name: Literal["mgda"] = "mgda"
    normalization: Normalization = "none"


class MGDAUB(ComponentConfig):
    """MGDA-UB: MGDA on gradients of the shared representation (needs a hard-sharing-like model)."""

    name: Literal["mgda_ub"] = "mgda_ub"
    normalization: Normalization = "none"


class CAGrad(ComponentConfig):
    """Conflict-averse gradient descent (Liu et al., 2021)."""

    name: Literal["cagrad"] = "cagrad"
    c: NonNegativeFloat = 0.4


class IMTL(ComponentConfig):
    """Impartial MTL (Liu et al., 2021): IMTL-G, plus IMTL-L when ``loss_scaling``."""

    name: Literal["imtl"] = "imtl"
    loss_scaling: bool = False
    lr: PositiveFloat = 0.025


class NashMTL(ComponentConfig):
    """Nash bargaining (Navon et al., 2022). ``solver: cvxpy`` needs the ``solvers`` extra."""

    name: Literal["nash_mtl"] = "nash_mtl"
    solver: Literal["newton", "cvxpy"] = "newton"
    update_every: Count = 1


class AlignedMTL(ComponentConfig):
    """Aligned-MTL (Senushkin et al., 2023)."""

    name: Literal["aligned_mtl"] = "aligned_mtl"


class DBMTL(ComponentConfig):
    """Dual balancing (Lin et al., 2023)."""

    name: Literal["db_mtl"] = "db_mtl"
    beta: float = Field(default=0.9, ge=0, lt=1)
    beta_sigma: NonNegativeFloat = 0.5


PrefWeight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class UPGrad(ComponentConfig):
    """Unconflicting projection of gradients (Quinton & Rey, 2024). ``pref_vector``: a weight per task
    (TorchJD's preference vector; every task of the objective must be listed), default ``1/T``."""

    name: Literal["upgrad"] = "upgrad"
    pref_vector: dict[str, PrefWeight] | None = None


class DualProj(ComponentConfig):
    """Dual-cone projection of the mean gradient, or of ``sum_t p_t g_t`` with ``pref_vector`` (Quinton & Rey, 2024)."""

    name: Literal["dualproj"] = "dualproj"
    pref_vector: dict[str, PrefWeight] | None = None


class MoDo(ComponentConfig):
    """Multi-objective gradient with double sampling (Chen et al., 2023), single-sample form."""

    name: Literal["modo"] = "modo"
    gamma: PositiveFloat = 0.001
    rho: NonNegativeFloat = 0.1


class SDMGrad(ComponentConfig):
    """Direction-oriented multi-objective gradient (Xiao et al., 2023): the subproblem solved exactly, one minibatch."""

    name: Literal["sdmgrad"] = "sdmgrad"
    lam: NonNegativeFloat = 0.3


class ConFIG(ComponentConfig):
    """Conflict-free inverse gradients (Liu et al., 2025)."""

    name: Literal["config"] = "config"


#: ``mtl.balancer``: any registered balancer (``fedmtl list balancer``), chosen by ``name``
Balancer = Annotated[SerializeAsAny[ComponentConfig], Registered("balancer")]


class WeightedSum(ComponentConfig):
    """Joint optimisation of the weighted sum of task losses, weights from the balancer."""

    name: Literal["weighted_sum"] = "weighted_sum"


class Alternating(ComponentConfig):
    """One task at a time, switching every step or every epoch (other tasks' heads fixed)."""

    name: Literal["alternating"] = "alternating"
    every: Literal["step", "epoch"] = "step"


class Lagrangian(ComponentConfig):
    """Minimise ``main``'s loss s.t. ``f_t <= eps_t`` (``constraints``); projected dual ascent with ``dual_lr``."""

    name: Literal["lagrangian"] = "lagrangian"
    main: str
    constraints: dict[str, NonNegativeFloat] = Field(min_length=1)
    dual_lr: PositiveFloat = 0.1
    init_multiplier: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _main_not_constrained(self) -> Lagrangian:
        if self.main in self.constraints:
            raise ValueError(f"scheme.main {self.main!r} cannot also be in scheme.constraints {sorted(self.constraints)}")
        return self


#: ``mtl.scheme``: any registered scheme (``fedmtl list scheme``), chosen by ``name``
Scheme = Annotated[SerializeAsAny[ComponentConfig], Registered("scheme")]


class Gradients(StrictModel):
    """Where gradient balancers take per-task gradients, and how the Jacobian is computed."""

    source: Literal["parameters", "representation"] = "parameters"
    jacobian: Literal["batched", "loop"] = "batched"


def loss_balancers() -> frozenset[str]:
    """Balancers that weight the task losses only (no per-task gradients): registered with ``loss_only=True``."""
    return frozenset(c.name for c in registry.components("balancer") if c.traits.get("loss_only"))


def parameter_gradient_balancers() -> frozenset[str]:
    """Balancers whose state is per parameter, so their per-task gradients must be taken on the parameters
    (registered with ``per_parameter_state=True``)."""
    return frozenset(c.name for c in registry.components("balancer") if c.traits.get("per_parameter_state"))


class MTLConfig(StrictModel):
    """The local objective: a joint-optimisation scheme and a loss balancer."""

    scheme: Scheme = Field(default_factory=WeightedSum)
    balancer: Balancer = Field(default_factory=EqualWeighting)
    gradients: Gradients = Field(default_factory=Gradients)

    @model_validator(mode="after")
    def _balancer_needs_weighted_sum(self) -> MTLConfig:
        if self.scheme.name != "weighted_sum" and self.balancer.name != "equal":
            raise ValueError(
                f"mtl.balancer {self.balancer.name!r} applies only with mtl.scheme 'weighted_sum'; "
                f"scheme {self.scheme.name!r} sets the weights itself (use balancer 'equal')"
            )
        return self

    @model_validator(mode="after")
    def _per_parameter_state_needs_parameter_gradients(self) -> MTLConfig:
        if self.gradients.source == "representation" and self.balancer.name in parameter_gradient_balancers():
            raise ValueError(
                f"mtl.balancer {self.balancer.name!r} keeps state per parameter and needs mtl.gradients.source "
                "'parameters', got 'representation'"
            )
        return self
