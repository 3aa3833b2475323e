"""Each client's compute speed and network bandwidth: drawn per client from a distribution, or from a trace.

A client's draw uses its own generator, ``(seed, "systems", what, client)`` (:mod:`fedmtl.fl.seeding`), so
a client's speed depends on neither the number of clients nor the order they are asked in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedmtl.config.systems import ClientSystems, Constant, LogNormal
from fedmtl.fl.seeding import generator
from fedmtl.fl.systems.traces import read_speed_trace

#: the ``what`` key of each draw's generator
SPEED, BANDWIDTH, PHASE = 0, 1, 2


def draw(dist: Constant | LogNormal, seed: int, what: int, client: int) -> float:
    """One client's value of ``dist``."""
    if isinstance(dist, Constant):
        return float(dist.value)
    z = float(torch.randn((), generator=generator(seed, "systems", what, client), dtype=torch.float64))
    return float(dist.median * math.exp(dist.sigma * z))


@dataclass(frozen=True)
class Profiles:
    """Per client (by id): training samples per second and bytes per second (both directions)."""

    speed: list[float]
    bandwidth: list[float]

    def __post_init__(self) -> None:
        if len(self.speed) != len(self.bandwidth):
            raise ValueError(f"{len(self.speed)} speeds for {len(self.bandwidth)} bandwidths")
        bad = [x for x in (*self.speed, *self.bandwidth) if not (x > 0 and math.isfinite(x))]
        if bad:
            raise ValueError(f"speeds and bandwidths must be finite and > 0, got {bad[0]}")

    @classmethod
    def from_config(cls, cfg: ClientSystems, num_clients: int, seed: int) -> Profiles:
        if cfg.trace is not None:
            return cls(*read_speed_trace(cfg.trace, num_clients))
        return cls(
            [draw(cfg.speed, seed, SPEED, c) for c in range(num_clients)],
            [draw(cfg.bandwidth, seed, BANDWIDTH, c) for c in range(num_clients)],
        )

    def duration(self, client: int, samples: int, bytes_down: int, bytes_up: int) -> float:
        """Seconds ``client`` needs for a round: receive, train, send.

        ``samples / speed + (bytes_down + bytes_up) / bandwidth``, with the real encoded sizes of what it
        received and sent (so compression shortens rounds as it does on a real link).
        """
        return samples / self.speed[client] + (bytes_down + bytes_up) / self.bandwidth[client]
