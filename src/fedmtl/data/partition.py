"""Partitioners: which rows each client gets. Pure functions of the labels and a numpy Generator.

Every partitioner returns a list of index arrays, one per client, that together cover every row
exactly once (no row lost or duplicated), and is deterministic under the generator's seed.
"""

from __future__ import annotations

import numpy as np

from fedmtl.data.source import DataError

MAX_REDRAWS = 1000


def _check(n: int, num_clients: int, min_size: int = 1) -> None:
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if n < num_clients * min_size:
        raise DataError(
            f"{n} rows cannot give {num_clients} clients at least {min_size} row(s) each; "
            f"lower data.num_clients (at most {n // max(min_size, 1)}) or use more data"
        )


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then deal out sizes differing by at most one."""
    _check(n, num_clients)
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 2) -> list[np.ndarray]:
    """Label skew (Hsu et al., 2019): each class's rows split by proportions ~ Dirichlet(alpha * 1).

    Small ``alpha`` gives each client few classes; large ``alpha`` approaches IID. Redraws until
    every client has ``min_size`` rows.
    """
    n = len(labels)
    _check(n, num_clients, min_size)
    classes = np.unique(labels)
    for _ in range(MAX_REDRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise DataError(
        f"Dirichlet(alpha={alpha}) could not give all {num_clients} clients >= {min_size} rows in {MAX_REDRAWS} draws; "
        "raise alpha, lower num_clients or min_size"
    )


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al., 2017): sort by label, cut into equal shards, deal shards out."""
    n = len(labels)
    total = num_clients * shards_per_client
    _check(n, total)
    order = np.lexsort((rng.random(n), labels))  # by label, ties in random order
    pieces = np.array_split(order, total)
    assignment = rng.permutation(total)
    return [
        np.sort(np.concatenate([pieces[s] for s in assignment[k * shards_per_client : (k + 1) * shards_per_client]]))
        for k in range(num_clients)
    ]


def quantity_skew(n: int, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 2) -> list[np.ndarray]:
    """IID rows, client sizes ``min_size + Multinomial(n - K * min_size, Dirichlet(alpha))``."""
    _check(n, num_clients, min_size)
    props = rng.dirichlet(np.full(num_clients, alpha))
    sizes = min_size + rng.multinomial(n - num_clients * min_size, props)
    perm = rng.permutation(n)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def natural(client_ids: np.ndarray) -> list[np.ndarray]:
    """One client per distinct id, in sorted order of the ids."""
    ids = np.asarray(client_ids)
    return [np.flatnonzero(ids == c) for c in np.unique(ids)]
