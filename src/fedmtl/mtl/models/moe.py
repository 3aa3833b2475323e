"""Mixtures of experts with task gates: MMoE, CGC and PLE.

* MMoE: Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.
* CGC and PLE: Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020.

Experts are MLPs on the flattened input; gates are linear maps followed by a softmax over experts.
Shared experts and the shared gates are ``shared``; a task's gate, own experts and tower are ``task:<t>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import SHARED, MultiTaskModel, check_tasks, task_group
from fedmtl.mtl.models.trunks import mlp
from fedmtl.registry import register
from fedmtl.tasks import Task


def _experts(n: int, in_dim: int, hidden: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList([mlp(in_dim, hidden) for _ in range(n)])


def mix_experts(weights: Tensor, outs: Tensor) -> Tensor:
    """``outs`` ``[E, N, D]`` mixed row by row by ``weights`` ``[N, E]``: ``Σ_e weights[n, e] · outs[e, n]``.

    Written as a broadcast product and a sum over the few experts rather than ``einsum("ne,end->nd")``: einsum
    turns the rows into a batch of ``[1, E] @ [E, D]`` products, and under ``vmap`` over clients (and the
    per-task backward) into thousands of tiny matrix products, several times slower on a CPU.
    """
    return (weights.T.unsqueeze(-1) * outs).sum(0)


def _mix(gate: nn.Module, x: Tensor, outs: Tensor) -> Tensor:
    """``outs`` ``[E, N, D]`` mixed by ``softmax(gate(x))`` ``[N, E]``."""
    return mix_experts(torch.softmax(gate(x), dim=-1), outs)


class MMoEModel(MultiTaskModel):
    """Shared experts; each task mixes them with its own softmax gate and feeds its tower.

    Subclasses change the gate only (:meth:`make_gate`, :meth:`expert_weights`): DSelect-k.
    """

    task_modules = ("gates", "towers")

    def __init__(self, input_shape: Sequence[int], tasks: Sequence[Task], num_experts: int = 4, expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = ()):
        super().__init__(tasks)
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        d = math.prod(input_shape)
        self.experts = _experts(num_experts, d, expert_hidden)
        self.gates = nn.ModuleDict({t.name: self.make_gate(d, num_experts) for t in tasks})
        self.towers = nn.ModuleDict({t.name: mlp(expert_hidden[-1], tower_hidden, t.output_dim) for t in tasks})

    def make_gate(self, in_dim: int, num_experts: int) -> nn.Module:
        """A task's gate: a linear map to one logit per expert."""
        return nn.Linear(in_dim, num_experts)

    def expert_weights(self, gate: nn.Module, x: Tensor) -> Tensor:
        """``[N, E]`` weights of the experts for inputs ``x``: the softmax of the gate's logits."""
        return torch.softmax(gate(x), dim=-1)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        x = x.flatten(1)
        outs = torch.stack([e(x) for e in self.experts])
        return {t: self.towers[t](mix_experts(self.expert_weights(self.gates[t], x), outs)) for t in names}



class _ExtractionLayer(nn.Module):
    """One CGC layer: shared and per-task experts; per-task gates over own + shared; optional shared gate over all."""

    def __init__(self, in_dim: int, tasks: Sequence[str], n_shared: int, n_task: int, hidden: Sequence[int], shared_gate: bool):
        super().__init__()
        self.tasks = list(tasks)
        self.shared_experts = _experts(n_shared, in_dim, hidden)
        self.task_experts = nn.ModuleDict({t: _experts(n_task, in_dim, hidden) for t in tasks})
        self.task_gates = nn.ModuleDict({t: nn.Linear(in_dim, n_shared + n_task) for t in tasks})
        self.shared_gate = nn.Linear(in_dim, n_shared + n_task * len(tasks)) if shared_gate else None

    def forward(self, task_in: dict[str, Tensor], shared_in: Tensor, tasks: Sequence[str]) -> tuple[dict[str, Tensor], Tensor | None]:
        shared_out = [e(shared_in) for e in self.shared_experts]
        need = self.tasks if self.shared_gate is not None else list(tasks)
        own = {t: [e(task_in[t]) for e in self.task_experts[t]] for t in need}  # type: ignore[attr-defined]
        out = {t: _mix(self.task_gates[t], task_in[t], torch.stack(own[t] + shared_out)) for t in tasks}
        s = None
        if self.shared_gate is not None:
            everything = shared_out + [o for t in self.tasks for o in own[t]]
            s = _mix(self.shared_gate, shared_in, torch.stack(everything))
        return out, s


class PLEModel(MultiTaskModel):
    """Progressive layered extraction: ``levels`` stacked CGC layers; ``levels=1`` is CGC.

    Lower levels also carry a shared gate over all experts that feeds the next level's shared experts.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        tasks: Sequence[Task],
        levels: int = 2,
        num_shared_experts: int = 2,
        num_task_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (),
    ):
        super().__init__(tasks)
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if num_shared_experts < 1 or num_task_experts < 0:
            raise ValueError(f"need num_shared_experts >= 1 and num_task_experts >= 0, got {num_shared_experts}, {num_task_experts}")
        d = math.prod(input_shape)
        names = [t.name for t in tasks]
        self.levels = nn.ModuleList(
            [
                _ExtractionLayer(d if i == 0 else expert_hidden[-1], names, num_shared_experts, num_task_experts, expert_hidden, i < levels - 1)
                for i in range(levels)
            ]
        )
        self.towers = nn.ModuleDict({t.name: mlp(expert_hidden[-1], tower_hidden, t.output_dim) for t in tasks})

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        x = x.flatten(1)
        task_in = {t: x for t in self.task_names}
        shared: Tensor | None = x
        for i, level in enumerate(self.levels):
            last = i == len(self.levels) - 1
            task_in, shared = level(task_in, shared, names if last else self.task_names)  # type: ignore[assignment,arg-type]
        return {t: self.towers[t](task_in[t]) for t in names}

    def group_of(self, param_name: str) -> str:
        parts = param_name.split(".")
        if parts[0] == "towers":
            return task_group(parts[1])
        if parts[0] == "levels" and parts[2] in ("task_experts", "task_gates"):
            return task_group(parts[3])
        return SHARED


def CGCModel(input_shape: Sequence[int], tasks: Sequence[Task], **kwargs: object) -> PLEModel:  # noqa: N802
    """Customised gate control: a single-level PLE."""
    return PLEModel(input_shape, tasks, levels=1, **kwargs)  # type: ignore[arg-type]

register(
    "model",
    "mmoe",
    lambda cfg, shape, tasks: MMoEModel(shape, tasks, cfg.num_experts, cfg.expert_hidden, cfg.tower_hidden),
    model_cfg.MMoE,
)
register(
    "model",
    "cgc",
    lambda cfg, shape, tasks: CGCModel(
        shape, tasks, num_shared_experts=cfg.num_shared_experts, num_task_experts=cfg.num_task_experts,
        expert_hidden=cfg.expert_hidden, tower_hidden=cfg.tower_hidden,
    ),
    model_cfg.CGC,
)
register(
    "model",
    "ple",
    lambda cfg, shape, tasks: PLEModel(
        shape, tasks, cfg.levels, cfg.num_shared_experts, cfg.num_task_experts, cfg.expert_hidden, cfg.tower_hidden
    ),
    model_cfg.PLE,
)
