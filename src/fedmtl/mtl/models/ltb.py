"""Learning to branch (Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020).

A layered tree: layer ``l`` has ``branches[l]`` nodes, the last layer one node per task. Each node
chooses its parent in the previous layer through learned logits ``alpha``; training uses the
relaxation ``softmax(alpha / tau)`` over parents (deterministic, so no RNG in the forward pass;
the paper samples Gumbel noise), and :meth:`LTBModel.branching` reads off the discrete tree
(``argmax``). Inner nodes and their logits are shared; the last-layer node of a task, its logits
and its head are ``task:<t>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmtl.config import model as model_cfg
from fedmtl.mtl.models.base import MultiTaskModel, check_tasks
from fedmtl.registry import register
from fedmtl.tasks import Task


class LTBModel(MultiTaskModel):
    """Tree-structured MLP with learned branching."""

    task_modules = ("last", "last_logits", "heads")

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], branches: Sequence[int], tasks: Sequence[Task], temperature: float = 1.0):
        super().__init__(tasks)
        if len(branches) != len(hidden) - 1:
            raise ValueError(f"branches needs len(hidden) - 1 = {len(hidden) - 1} entries (the last layer has one node per task), got {list(branches)}")
        if any(b < 1 for b in branches):
            raise ValueError(f"branches must be >= 1, got {list(branches)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        dims = [math.prod(input_shape), *hidden]
        counts = [1, *branches]
        self.inner = nn.ModuleList(
            [nn.ModuleList([nn.Linear(dims[i], dims[i + 1]) for _ in range(counts[i + 1])]) for i in range(len(branches))]
        )
        self.inner_logits = nn.ParameterList([nn.Parameter(torch.zeros(counts[i + 1], counts[i])) for i in range(len(branches))])
        self.last = nn.ModuleDict({t.name: nn.Linear(dims[-2], dims[-1]) for t in tasks})
        self.last_logits = nn.ParameterDict({t.name: nn.Parameter(torch.zeros(counts[-1])) for t in tasks})
        self.heads = nn.ModuleDict({t.name: nn.Linear(dims[-1], t.output_dim) for t in tasks})

    def _mix(self, logits: Tensor, nodes: Tensor) -> Tensor:
        return torch.einsum("p,pnd->nd", torch.softmax(logits / self.temperature, 0), nodes)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        nodes = x.flatten(1).unsqueeze(0)
        for layer, logits in zip(self.inner, self.inner_logits):
            nodes = torch.stack([torch.relu(lin(self._mix(logits[j], nodes))) for j, lin in enumerate(layer)])  # type: ignore[arg-type,var-annotated]
        return {t: self.heads[t](torch.relu(self.last[t](self._mix(self.last_logits[t], nodes)))) for t in names}

    def branching(self) -> dict[str, list[int]]:
        """The discrete tree: for each task, the chosen node index at every inner layer (root excluded)."""
        out = {}
        for t in self.task_names:
            path = [int(self.last_logits[t].argmax())]
            for logits in reversed(list(self.inner_logits)[1:]):
                path.append(int(logits[path[-1]].argmax()))
            out[t] = path[::-1]
        return out

register("model", "ltb", lambda cfg, shape, tasks: LTBModel(shape, cfg.hidden, cfg.branches, tasks, cfg.temperature), model_cfg.LTB)
