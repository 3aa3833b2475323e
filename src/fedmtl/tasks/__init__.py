"""Tasks: name, kind, loss and metrics."""

from fedmtl.tasks.task import Task, TaskKind, add_sums

__all__ = ["Task", "TaskKind", "add_sums"]
