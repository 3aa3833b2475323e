"""What the round drivers on the simulated clock share: the clients' profiles and availability, and the clock.

A driver wraps a :class:`~fedmtl.fl.federation.Federation` and runs its round, :meth:`Federation.round`, over
a transport of its own: the synchronous driver's applies the deadline, the asynchronous one's (FedBuff's
buffer) dispatches clients over simulated time and hands the driver whoever's updates arrived; a driver owns
only the order of events in simulated time. The clock and
whatever else a driver must remember between rounds live in ``ServerState.systems_state`` (a tensor
tree), so checkpoints carry them and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Protocol

import torch

from fedmtl.config.systems import SystemsConfig
from fedmtl.fl.federation import Federation, RoundReport, ServerState
from fedmtl.fl.systems.availability import Availability, build_availability
from fedmtl.fl.systems.profiles import Profiles
from fedmtl.tree import TensorTree


class Rounds(Protocol):
    """What the experiment's loop asks of whatever runs its rounds (a Federation or a systems driver)."""

    def init_state(self) -> ServerState: ...

    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]: ...

    def stop_reason(self, state: ServerState) -> str: ...

    def can_run_round(self, state: ServerState) -> bool: ...


def clock_of(state: ServerState) -> float:
    """The simulated time (seconds) at which ``state`` was reached (0 before the first round)."""
    clock = state.systems_state.get("clock")
    return float(clock) if isinstance(clock, torch.Tensor) else 0.0


def clock_tree(t: float) -> TensorTree:
    return {"clock": torch.tensor(t, dtype=torch.float64)}


class Driver(ABC):
    """The shared part of the synchronous and the asynchronous driver (each defines :meth:`round`)."""

    def __init__(self, cfg: SystemsConfig, fed: Federation):
        self.cfg = cfg
        self.fed = fed
        n = fed.data.num_clients
        self.profiles = Profiles.from_config(cfg.clients, n, fed.cfg.seed)
        self.availability: Availability = build_availability(cfg.availability, n, fed.cfg.seed)

    def samples(self, client: int) -> int:
        """Training samples ``client`` processes in one local training: ``client.epochs`` passes over its rows."""
        return self.fed.cfg.client.epochs * self.fed.data.clients[client].num_train

    def duration(self, client: int, bytes_down: int, bytes_up: int) -> float:
        return self.profiles.duration(client, self.samples(client), bytes_down, bytes_up)

    def init_state(self) -> ServerState:
        return replace(self.fed.init_state(), systems_state=clock_tree(0.0))

    def can_run_round(self, state: ServerState) -> bool:
        return self.fed.can_run_round(state)

    @abstractmethod
    def round(self, state: ServerState) -> tuple[ServerState, RoundReport]:
        """Run until the next server step and return the next state (inputs are not mutated)."""

    def stop_reason(self, state: ServerState) -> str:
        reason = self.fed.stop_reason(state)
        if reason or not self.idle(state):
            return reason
        t = clock_of(state)
        if math.isinf(self.availability.next_online(t)):
            return f"no client is online at or after simulated time {t:.6g}s (availability)"
        return ""

    def idle(self, state: ServerState) -> bool:
        """Whether nothing is under way that could still finish (the asynchronous driver's clients in flight)."""
        return True
