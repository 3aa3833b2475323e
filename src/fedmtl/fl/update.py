"""What a client sends back after local training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution to a round.

    Attributes:
        client_id: who sent it.
        delta: ``local - global`` for every parameter the client trained and shares (its tasks' heads
            and the shared trunk; never ``local`` parameters).
        num_samples: training rows; the weight of the shared trunk in FedAvg.
        task_samples: labelled training rows per task; the weight of that task's head.
        metrics: training statistics (mean loss per task, steps).
        outbox: the algorithm's extra uploads (SCAFFOLD's ``delta_c``, FedEM's components), decoded; ``{}`` for most.
    """

    client_id: int
    delta: dict[str, Tensor]
    num_samples: int
    task_samples: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)
    outbox: TensorTree = field(default_factory=dict)

    def weight_for(self, group: str) -> float:
        """Aggregation weight of this update for a parameter group."""
        if group.startswith("task:"):
            return float(self.task_samples.get(group[5:], 0))
        return float(self.num_samples)


def bound_claims(
    num_samples: object, task_samples: object, known: int, known_tasks: Mapping[str, int]
) -> tuple[int, dict[str, int], list[str]]:
    """A client's claimed sample counts, bounded by what the server knows of it.

    A claimed count weighs a client's update in FedAvg: an unbounded claim (1e12) takes all the weight, one
    beyond float range (1e40) turns the weighted mean into NaN. Each claim is clamped into ``[0, known]``
    (``known_tasks[t]`` for task ``t``; tasks the client does not hold are left out).

    Args:
        num_samples: the claimed training rows.
        task_samples: the claimed labelled rows per task.
        known: the most rows the server knows the client to hold.
        known_tasks: task -> the most rows of that task the server knows the client to hold.

    Returns:
        ``(num_samples, task_samples, notes)``: the bounded claims and one note per clamp (empty when none).

    Raises:
        ValueError: a claim that is not a number (an int, or a float holding one) or a dict of them.
    """
    notes: list[str] = []

    def clamp(what: str, value: object, cap: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{what} must be a number of samples, got {str(value)[:40]!r}")
        if not 0 <= value <= cap:
            notes.append(f"{what} {value!r} clamped to {min(max(value, 0), cap)}")
        return int(min(max(value, 0), cap))

    if not isinstance(task_samples, Mapping):
        raise ValueError(f"task_samples must map task -> samples, got {type(task_samples).__name__}")
    out_tasks: dict[str, int] = {}
    for task, value in task_samples.items():
        if task not in known_tasks:
            notes.append(f"task_samples for {str(task)[:40]!r}, a task it does not hold, ignored")
            continue
        out_tasks[task] = clamp(f"task_samples[{task!r}]", value, known_tasks[task])
    return clamp("num_samples", num_samples, known), out_tasks, notes
