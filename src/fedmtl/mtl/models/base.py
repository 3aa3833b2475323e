"""What every multi-task model offers: ``{task: prediction}`` out, and tagged parameter groups.

Parameter groups drive federated aggregation: ``"shared"`` parameters are averaged over every
client in the cohort, ``"task:<name>"`` parameters only over the clients that hold that task, and
``"local"`` parameters never leave the client.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from torch import Tensor, nn

from fedmtl.tasks import Task

SHARED = "shared"
LOCAL = "local"


def task_group(task: str) -> str:
    """The group name of a task's own parameters."""
    return f"task:{task}"


class MultiTaskModel(nn.Module, abc.ABC):
    """Base class: subclasses implement :meth:`forward`, and name their per-task modules in
    :attr:`task_modules` (or override :meth:`group_of` when the layout is not ``<module>.<task>.…``)."""

    #: top-level modules that hold one submodule per task (``heads.<task>.…``): their parameters belong
    #: to that task's group, every other parameter is shared
    task_modules: tuple[str, ...] = ()
    #: whether :meth:`penalty` reads the last forward pass (distillation) rather than the parameters alone;
    #: an engine that batches clients must then not mix their rows or tasks in one forward pass
    penalty_reads_forward: bool = False

    def __init__(self, tasks: Sequence[Task]):
        super().__init__()
        if not tasks:
            raise ValueError("a multi-task model needs at least one task")
        self.tasks: dict[str, Task] = {t.name: t for t in tasks}

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @abc.abstractmethod
    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Predictions for ``tasks`` (default: all), ``{task: prediction}``."""

    def group_of(self, param_name: str) -> str:
        """The group of a parameter, by its name in ``named_parameters()``."""
        module, _, rest = param_name.partition(".")
        if module in self.task_modules:
            return task_group(rest.split(".")[0])
        return SHARED

    def penalty(self) -> Tensor | None:
        """A regulariser the objective adds to the loss (soft sharing, MTRL, distillation); ``None`` if none.

        It may depend on the last forward pass (distillation) or only on the parameters.
        """
        return None

    def shared_representation(self) -> Tensor | None:
        """The last forward pass's shared representation ``z`` (the only path from shared parameters to
        the predictions), for representation-gradient balancing (MGDA-UB); ``None`` if the model has none."""
        return None

    def task_representations(self) -> dict[str, Tensor] | None:
        """Optional fast path: per-task aliases of the shared representation, each feeding only its
        task's head, so one ordinary backward pass of ``sum_t L_t`` yields every ``dL_t/dz``."""
        return None

    def param_groups(self) -> dict[str, list[str]]:
        """Group name -> parameter names, in ``named_parameters()`` order."""
        groups: dict[str, list[str]] = {}
        for name, _ in self.named_parameters():
            groups.setdefault(self.group_of(name), []).append(name)
        return groups

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if self.group_of(n) == SHARED]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        out: dict[str, list[nn.Parameter]] = {t: [] for t in self.tasks}
        for n, p in self.named_parameters():
            g = self.group_of(n)
            if g.startswith("task:"):
                out[g[5:]].append(p)
        return out


def check_tasks(model: MultiTaskModel, tasks: Sequence[str] | None) -> list[str]:
    """The requested task list, or all; unknown names are an error listing the model's tasks."""
    if tasks is None:
        return model.task_names
    unknown = [t for t in tasks if t not in model.tasks]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; the model has {model.task_names}")
    return list(tasks)

