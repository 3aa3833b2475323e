"""Configuration of the multi-task model: a trunk (what tasks share) and the sharing architecture."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, SerializeAsAny, model_validator

from fedmtl.config.base import Width
from fedmtl.config.registered import ComponentConfig, Registered

#: the most layers a trunk, head, tower or expert may stack
MAX_LAYERS = 64
#: widths of zero or more stacked layers
Layers = Annotated[list[Width], Field(max_length=MAX_LAYERS)]
#: widths of one or more stacked layers
Hidden = Annotated[list[Width], Field(min_length=1, max_length=MAX_LAYERS)]


class MLPTrunk(ComponentConfig):
    """A multilayer perceptron on flattened inputs."""

    name: Literal["mlp"] = "mlp"
    hidden: Hidden = Field(default=[128, 128])
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    norm: Literal["none", "batch"] = Field(
        default="none",
        description="'batch' puts a BatchNorm1d after each hidden Linear (before the activation). Its running "
        "statistics are client state: only the fedbn and local algorithms accept it.",
    )


class CNN1DTrunk(ComponentConfig):
    """A 1-D convolutional trunk for signals such as MNIST-1D."""

    name: Literal["cnn1d"] = "cnn1d"
    channels: Hidden = Field(default=[32, 32])
    kernel_size: Width = 5
    hidden: Width = 128


class CNN2DTrunk(ComponentConfig):
    """A 2-D convolutional trunk for images such as Fashion-MNIST."""

    name: Literal["cnn2d"] = "cnn2d"
    channels: Hidden = Field(default=[32, 64])
    hidden: Width = 128


#: ``Trunk``: any registered trunk (``fedmtl list trunk``), chosen by ``name``
Trunk = Annotated[SerializeAsAny[ComponentConfig], Registered("trunk")]


class HardSharing(ComponentConfig):
    """Hard parameter sharing: one shared trunk, one head per task."""

    name: Literal["hard_sharing"] = "hard_sharing"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    head_hidden: Layers = Field(default=[], description="Hidden layers of each task head.")


class SharedEncoder(ComponentConfig):
    """Feature sharing: a shared encoder feeding one tower (MLP) per task."""

    name: Literal["shared_encoder"] = "shared_encoder"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    tower_hidden: Hidden = Field(default=[64])


class SoftSharing(ComponentConfig):
    """One model per task, coupled by ``strength * sum_t ||theta_t - mean||^2``."""

    name: Literal["soft_sharing"] = "soft_sharing"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    head_hidden: Layers = Field(default=[])
    strength: NonNegativeFloat = 1e-3


class CrossStitch(ComponentConfig):
    """Cross-stitch networks: one MLP column per task mixed by learned units after every layer."""

    name: Literal["cross_stitch"] = "cross_stitch"
    hidden: Hidden = Field(default=[128, 64])
    self_weight: float = Field(default=0.9, gt=0, le=1)


class MTAN(ComponentConfig):
    """Multi-task attention network: shared MLP backbone, per-task attention masks."""

    name: Literal["mtan"] = "mtan"
    hidden: Hidden = Field(default=[128, 64])


class MMoE(ComponentConfig):
    """Multi-gate mixture of experts."""

    name: Literal["mmoe"] = "mmoe"
    num_experts: Width = 4
    expert_hidden: Hidden = Field(default=[64])
    tower_hidden: Layers = Field(default=[])


class CGC(ComponentConfig):
    """Customised gate control (single-level PLE)."""

    name: Literal["cgc"] = "cgc"
    num_shared_experts: Width = 2
    num_task_experts: Width = 1
    expert_hidden: Hidden = Field(default=[64])
    tower_hidden: Layers = Field(default=[])


class PLE(ComponentConfig):
    """Progressive layered extraction (stacked CGC layers)."""

    name: Literal["ple"] = "ple"
    levels: int = Field(default=2, ge=1, le=8)
    num_shared_experts: Width = 2
    num_task_experts: Width = 1
    expert_hidden: Hidden = Field(default=[64])
    tower_hidden: Layers = Field(default=[])


class DSelectK(ComponentConfig):
    """Mixture of experts with DSelect-k gates."""

    name: Literal["dselect_k"] = "dselect_k"
    num_experts: Width = 4
    k: Width = 2
    expert_hidden: Hidden = Field(default=[64])
    tower_hidden: Layers = Field(default=[])
    gamma: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _k_at_most_experts(self) -> DSelectK:
        if self.k > self.num_experts:
            raise ValueError(f"model.k={self.k} must be <= model.num_experts={self.num_experts}")
        return self


class LTB(ComponentConfig):
    """Learning to branch: a tree-structured MLP with learned parent choices."""

    name: Literal["ltb"] = "ltb"
    hidden: Hidden = Field(default=[128, 64, 64])
    branches: Layers = Field(default=[1, 2], description="Nodes per inner layer; len(hidden) - 1 entries.")
    temperature: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _branches_match(self) -> LTB:
        if len(self.branches) != len(self.hidden) - 1:
            raise ValueError(f"model.branches needs len(model.hidden) - 1 = {len(self.hidden) - 1} entries, got {len(self.branches)}")
        return self


class MTRL(ComponentConfig):
    """Multi-task relationship learning: task adapters coupled by a learned task covariance."""

    name: Literal["mtrl"] = "mtrl"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    adapter_dim: Width = 32
    strength: NonNegativeFloat = 1e-3


class Distillation(ComponentConfig):
    """Per-task students distilled to and from a shared multi-task teacher (Distral)."""

    name: Literal["distillation"] = "distillation"
    trunk: Trunk = Field(default_factory=MLPTrunk)
    strength: NonNegativeFloat = 0.5
    temperature: PositiveFloat = 2.0


class ImportedModel(ComponentConfig):
    """Your own model, built by a factory you name by import path (so the CLI, torchrun workers and Flower
    ClientApps can build it): ``factory(**kwargs)`` returns a ``torch.nn.Module`` whose ``forward(x)`` (or
    ``forward(x, tasks)``) returns ``{task: prediction}``. The factory also receives ``input_shape`` and
    ``tasks`` (fedmtl's Task objects) when its signature names them."""

    name: Literal["import"] = "import"
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", description="'package.module:factory'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")
    task_params: dict[str, list[str]] | None = Field(
        default=None,
        description="Task -> module-name prefixes of that task's own parameters; default: the module's `heads` ModuleDict.",
    )


#: ``Architecture``: any registered model (``fedmtl list model``), chosen by ``name``
Architecture = Annotated[SerializeAsAny[ComponentConfig], Registered("model")]
