"""Your own ``torch.nn.Module`` as a multi-task model.

Any module whose ``forward(x)`` returns ``{task: prediction}`` (or ``forward(x, tasks)``, as fedmtl's own
models) trains in fedmtl: federated, on every engine, with every method. What fedmtl needs to know is
which parameters belong to one task (aggregated only among the clients holding that task) and which are
shared (aggregated over everyone):

* by default, a ``heads`` :class:`torch.nn.ModuleDict` keyed by task name: ``heads.<task>.*`` is that
  task's, everything else is shared;
* otherwise an explicit mapping ``{task: [module-name prefixes]}`` (``{"digit": ["digit_head"]}``).

The wrapped module is registered as ``module``, so parameter names (checkpoints, ``Results.params``)
carry the ``module.`` prefix that ``DistributedDataParallel`` users know.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from fedmtl.mtl.models.base import SHARED, MultiTaskModel, check_tasks, task_group
from fedmtl.tasks import Task

PREFIX = "module."


class ModelSpecError(ValueError):
    """A user's model that fedmtl cannot use; the message says what is wrong and what is expected."""


class ModuleModel(MultiTaskModel):
    """A user's module, with its parameters grouped into shared and per-task ones.

    Args:
        module: the user's model; ``forward(x)`` (or ``forward(x, tasks)``, a parameter named ``tasks``) returns
            ``{task: prediction}``: ``[B, classes]`` logits for a multiclass task, ``[B]`` or ``[B, 1]`` for a
            binary logit or a regression value.
        tasks: the experiment's tasks (the keys the module must return).
        task_params: task -> module-name prefixes of its own parameters; default: the ``heads`` ModuleDict.
    """

    def __init__(self, module: nn.Module, tasks: Sequence[Task], task_params: Mapping[str, Sequence[str]] | None = None):
        super().__init__(tasks)
        if not isinstance(module, nn.Module):
            raise ModelSpecError(f"a model must be a torch.nn.Module (or a callable returning one), got {type(module).__name__}")
        self.module = module
        self._takes_tasks = _forward_takes_tasks(module)
        self._groups = _groups(module, self.task_names, task_params)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        names = check_tasks(self, tasks)
        out = self.module(x, names) if self._takes_tasks else self.module(x)
        if not isinstance(out, Mapping):
            raise ModelSpecError(f"{type(self.module).__name__}.forward must return a dict {{task: prediction}}, got {type(out).__name__}")
        missing = [t for t in names if t not in out]
        if missing:
            raise ModelSpecError(f"{type(self.module).__name__}.forward returned no prediction for task(s) {missing}; it returned {sorted(out)}")
        # fedmtl's convention: [B, classes] for multiclass, [B, 1] for a binary logit or a regression value
        return {t: out[t] if self.tasks[t].kind == "multiclass" or out[t].dim() != 1 else out[t].unsqueeze(-1) for t in names}

    def group_of(self, param_name: str) -> str:
        return self._groups.get(param_name, SHARED)


def _forward_takes_tasks(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes the tasks to predict: a parameter named ``tasks`` (a second positional
    parameter under another name, ``mask`` say, is the user's own and is left alone)."""
    try:
        return "tasks" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def _groups(module: nn.Module, tasks: Sequence[str], task_params: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """``module.<name>`` -> ``task:<t>`` for every task's own parameter (the rest is shared), validated."""
    names = [n for n, _ in module.named_parameters()]
    if not names:
        raise ModelSpecError(f"{type(module).__name__} has no parameters to train")
    if task_params is None:
        heads = getattr(module, "heads", None)
        if not isinstance(heads, nn.ModuleDict):
            raise ModelSpecError(
                f"{type(module).__name__} has no `heads` nn.ModuleDict keyed by task name; add one "
                f"(heads[{tasks[0]!r}] = ...), or pass task_params={{task: [module-name prefixes]}} "
                "(model: {name: import, task_params: ...} in a config)"
            )
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise ModelSpecError(f"{type(module).__name__}.heads has no module for task(s) {missing}; it has {list(heads)}")
        task_params = {t: [f"heads.{t}"] for t in tasks}
    unknown = [t for t in task_params if t not in tasks]
    if unknown:
        raise ModelSpecError(f"task_params names unknown task(s) {unknown}; the tasks are {list(tasks)}")
    out: dict[str, str] = {}
    for task, prefixes in task_params.items():
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        for prefix in prefixes:
            owned = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
            if not owned:
                raise ModelSpecError(f"task_params[{task!r}]: no parameter of {type(module).__name__} is under {prefix!r}; its parameters start with {sorted({n.split('.')[0] for n in names})}")
            for n in owned:
                if PREFIX + n in out and out[PREFIX + n] != task_group(task):
                    raise ModelSpecError(f"parameter {n!r} is listed for two tasks ({out[PREFIX + n][5:]!r} and {task!r})")
                out[PREFIX + n] = task_group(task)
    return out
