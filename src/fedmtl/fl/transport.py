"""How a round's broadcast reaches its clients and their replies come back: the part of a round that varies.

:meth:`Federation.round <fedmtl.fl.federation.Federation.round>` is the one round driver: plan, deliver
over a :class:`Transport`, collect, apply. The transports are the in-process engine (:class:`InProcess`),
the simulated clock's deadline (:class:`fedmtl.fl.systems.sync.SyncRounds`), the torch.distributed ranks
(an :class:`InProcess` over ``fedmtl.engine.distributed.DistributedEngine``), Flower's grid
(``fedmtl.integrations.flower.strategy``) and the streamed reduction (``fedmtl.engine.reducing.Streamed``).
A transport never steps the server: the server's step stays in the federation.

A :class:`Dispatching` transport chooses and plans its cohort itself (FedBuff's buffer, over simulated time).
A :class:`Reducing` transport may take a whole cohort over instead (plan, deliver and collect, chunk by
chunk, with the federation's own steps) and hand back only the reduced sums (:class:`Reduced`): a round of
10,000 clients then never holds 10,000 replies or payloads. The driver takes the same server step from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

from fedmtl.fl.client_state import ClientState
from fedmtl.fl.node import ClientReply

if TYPE_CHECKING:
    from fedmtl.fl.cohort import Engine
    from fedmtl.fl.federation import Federation, RoundPlan, ServerState
    from fedmtl.fl.privacy_step import PrivateAggregate
    from fedmtl.fl.update import ClientUpdate


@dataclass(frozen=True)
class Delivery:
    """What came back of a round's broadcast.

    Attributes:
        replies: the replies that arrived, to be decoded and checked by the server.
        client_states: every client's state after the round as the server keeps it (the simulation: those
            that replied, the others as they were); ``None`` when the clients keep their own (a deployment).
        dropped: clients lost before their reply was read (a failed or late node, a simulated deadline), with why.
        collect: replaces :meth:`Federation.collect` for these replies (secure aggregation on a deployment: the
            replies carry public keys, not updates).
        aggregate: replaces the in-process aggregation in :meth:`Federation.apply` (secure aggregation's
            remaining message exchanges, which reveal only the sums).
    """

    replies: Sequence[ClientReply]
    client_states: Mapping[int, ClientState] | None = None
    dropped: Mapping[int, str] = field(default_factory=dict)
    collect: Callable[[Sequence[ClientReply]], tuple[list[ClientUpdate], dict[int, str]]] | None = None
    aggregate: Callable[[ServerState, Sequence[ClientUpdate]], PrivateAggregate] | None = None


@dataclass(frozen=True)
class Dispatched(Delivery):
    """What a :class:`Dispatching` transport's own broadcasts brought back: the replies, and the round it chose.

    Attributes:
        cohort: the clients whose replies (or drops) this server step concludes.
        bytes_down, algorithm_bytes_down: what its broadcasts weighed (all, and the algorithm's state).
        scale: client id -> factor its decoded update is multiplied by before aggregation (FedBuff's staleness
            weight); 1 for a client not named.
    """

    cohort: Sequence[int] = ()
    bytes_down: int = 0
    algorithm_bytes_down: int = 0
    scale: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Reduced:
    """A cohort's replies reduced as they arrived (:class:`Reducing`): what the server step and the report need.

    Attributes:
        mean: the weighted mean update of every parameter somebody sent (``{}``: nobody did).
        client_states: the state after the round of every client that took part.
        dropped: clients whose update was left out of ``mean``, with why.
        train_loss: per task, the training loss averaged over the accepted updates that reported it.
        bytes_down, bytes_up: what the round's broadcast and replies weighed.
    """

    mean: Mapping[str, Tensor]
    client_states: Mapping[int, ClientState]
    dropped: Mapping[int, str]
    train_loss: Mapping[str, float]
    bytes_down: int
    bytes_up: int


class Transport(Protocol):
    """Carries ``plan`` to its cohort and brings back what the clients sent."""

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery: ...


@runtime_checkable
class Reducing(Protocol):
    """A transport that may run a whole cohort itself and reduce the replies as they come (bounded memory).

    ``reduce`` plans, delivers and collects the cohort chunk by chunk with the federation's own steps
    (:meth:`~fedmtl.fl.federation.Federation.plan`, ``jobs``, ``uploads``, ``collect``) and returns the sums,
    or ``None`` when this round cannot be reduced so (an aggregator that needs every update at once,
    privacy, an algorithm with a server step): the driver then plans the whole cohort and calls ``deliver``.
    """

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery: ...

    def reduce(self, state: ServerState, cohort: Sequence[int]) -> Reduced | None: ...


@runtime_checkable
class Dispatching(Protocol):
    """A transport that chooses its cohort and plans its broadcasts itself, over time: FedBuff's buffer
    (:class:`fedmtl.fl.systems.fedbuff.Buffered`) dispatches clients as slots free up and concludes a server
    step with whoever's updates arrived, each trained on the model version it was sent. The driver collects,
    applies and reports what it returns as any other delivery."""

    def dispatch(self, state: ServerState) -> Dispatched: ...


class TooFewUpdates(RuntimeError):
    """A round got fewer valid updates than it needs (nothing was applied); a deployment retries it.

    Attributes:
        updates: how many valid updates arrived.
        dropped: client id -> why its update is missing.
    """

    def __init__(self, updates: int, dropped: Mapping[int, str]):
        super().__init__(f"{updates} valid updates")
        self.updates = updates
        self.dropped = dict(dropped)


class InProcess:
    """The clients run here: decode, train the cohort on an engine (the federation's, or ``engine``), upload.

    Args:
        fed: the federation whose clients run.
        engine: trains the cohort instead of ``fed.engine`` (torch.distributed spreads it over the ranks).
    """

    def __init__(self, fed: Federation, engine: Engine | None = None):
        self.fed = fed
        self.engine = engine

    def deliver(self, state: ServerState, plan: RoundPlan) -> Delivery:
        replies, states = self.fed.local_round(state, plan, engine=self.engine)
        return Delivery(replies, {**state.client_states, **states})


__all__ = ["Delivery", "Dispatched", "Dispatching", "InProcess", "Reduced", "Reducing", "TooFewUpdates", "Transport"]
