"""What a client sends back after local training."""

from __future__ import annotations

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
