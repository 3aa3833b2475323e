"""Tasks: name, kind, loss and metrics."""

from fedmtl.tasks.task import MISSING_CLASS, Task, TaskKind, add_sums, higher_is_better

__all__ = ["MISSING_CLASS", "Task", "TaskKind", "add_sums", "higher_is_better"]
