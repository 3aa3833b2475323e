"""Task assignment: which tasks each client holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedmtl.data.source import DataError


def all_tasks(num_clients: int, tasks: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(tasks)] * num_clients


def random_subset(num_clients: int, tasks: Sequence[str], k: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Each client holds ``k`` tasks drawn without replacement; every task keeps at least one holder.

    Tasks are dealt round-robin from a shuffled order first (which covers every task once there are
    enough clients), then each client's remaining slots are drawn at random.
    """
    if not 1 <= k <= len(tasks):
        raise DataError(f"tasks_per_client={k} must lie in 1..{len(tasks)} (the number of tasks)")
    if num_clients * k < len(tasks):
        raise DataError(f"{num_clients} clients holding {k} task(s) each cannot cover all {len(tasks)} tasks")
    order = list(rng.permutation(len(tasks)))
    out = []
    for c in range(num_clients):
        first = order[c % len(tasks)]
        rest = [i for i in rng.permutation(len(tasks)) if i != first][: k - 1]
        chosen = sorted([first, *rest])
        out.append(tuple(tasks[i] for i in chosen))
    return out


def explicit(num_clients: int, tasks: Sequence[str], mapping: Mapping[int, Sequence[str]]) -> list[tuple[str, ...]]:
    """Task sets given per client index; unlisted clients hold every task."""
    bad_ids = sorted(c for c in mapping if not 0 <= c < num_clients)
    if bad_ids:
        raise DataError(f"task_assignment lists clients {bad_ids}, valid client indices are 0..{num_clients - 1}")
    out = []
    for c in range(num_clients):
        chosen = list(mapping.get(c, tasks))
        unknown = [t for t in chosen if t not in tasks]
        if unknown or not chosen:
            raise DataError(f"client {c}: task list {chosen} must be a non-empty subset of {list(tasks)}")
        out.append(tuple(t for t in tasks if t in chosen))
    return out
