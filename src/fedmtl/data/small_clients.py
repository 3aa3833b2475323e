"""The minimum client size: clients with too few usable rows are reported, then dropped, merged or kept.

A natural partition (schools, hospitals, a ``client_column``) often has a long tail of tiny clients: a
1-row client has no local test row, and a 2-row test split makes a per-client R² meaningless. Pure
function of the partition's rows and each client's usable size; the caller masks labels of merged rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmtl.data.cleaning import SmallClient, SmallClients
from fedmtl.data.source import DataError


def apply_min_size(
    rows: Sequence[np.ndarray],
    task_sets: Sequence[tuple[str, ...]],
    sizes: Sequence[int],
    min_rows: int,
    action: str,
    task_order: Sequence[str],
    names: Sequence[str | None] | None = None,
) -> tuple[list[np.ndarray], list[tuple[str, ...]], SmallClients]:
    """Clients whose usable ``sizes`` fall below ``min_rows``, handled by ``action``.

    Args:
        rows: each client's row indices (the partition).
        task_sets: the tasks each client holds.
        sizes: each client's usable rows.
        min_rows: the smallest size kept as it is.
        action: ``drop`` (leave them out), ``merge`` (pool them into one client: a new last one, or, when
            the pool is itself below ``min_rows``, the smallest client at or above it) or ``keep``.
        task_order: every task, in order (a merged client holds the union of its members' tasks).
        names: each client's natural id, for the report.

    Returns:
        The clients' rows and task sets afterwards, and the report.
    """
    if action not in ("drop", "merge", "keep"):
        raise DataError(f"data.small_clients.action {action!r} not in drop, merge, keep")
    small = [i for i, n in enumerate(sizes) if n < min_rows]
    report = SmallClients(
        min_rows, action, tuple(SmallClient(i, None if names is None else names[i], int(sizes[i])) for i in small)
    )
    if not small or action == "keep":
        return list(rows), list(task_sets), report
    big = [i for i in range(len(rows)) if i not in set(small)]
    if action == "drop":
        if not big:
            raise DataError(
                f"every client has fewer than data.small_clients.min_rows={min_rows} usable rows (largest: "
                f"{max(sizes)}); lower min_rows, use action merge, or check the data and the partition"
            )
        out_rows, out_tasks = [rows[i] for i in big], [task_sets[i] for i in big]
        orphaned = [t for t in task_order if any(t in task_sets[i] for i in range(len(rows))) and not any(t in ts for ts in out_tasks)]
        if orphaned:
            raise DataError(
                f"dropping the clients below data.small_clients.min_rows={min_rows} leaves task(s) {orphaned} "
                "with no client; use data.small_clients.action merge or lower min_rows"
            )
        return out_rows, out_tasks, report

    def union(members: Sequence[int]) -> tuple[str, ...]:
        held = {t for i in members for t in task_sets[i]}
        return tuple(t for t in task_order if t in held)

    pool = sorted(small)
    out_rows, out_tasks = [rows[i] for i in big], [task_sets[i] for i in big]
    if sum(sizes[i] for i in pool) >= min_rows or not big:
        if sum(sizes[i] for i in pool) < min_rows:
            raise DataError(
                f"all clients together have {sum(sizes)} usable rows, fewer than data.small_clients.min_rows={min_rows}; "
                "lower min_rows or check the data"
            )
        out_rows.append(np.sort(np.concatenate([rows[i] for i in pool])))
        out_tasks.append(union(pool))
        target = len(out_rows) - 1
    else:
        host = min(big, key=lambda i: (sizes[i], i))
        target = big.index(host)
        out_rows[target] = np.sort(np.concatenate([rows[host], *(rows[i] for i in pool)]))
        out_tasks[target] = union([host, *pool])
    return out_rows, out_tasks, SmallClients(min_rows, action, report.clients, merged_into=target)
