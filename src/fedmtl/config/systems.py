"""Configuration of the simulated system: client speeds and bandwidths, availability, and the round mode.

Without a ``systems`` section every sampled client answers at once, as before. With one, every round
(or, under FedBuff, every aggregation) advances a simulated clock, logged as ``virtual_time``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from fedmtl.config.base import MAX_COUNT, Size, StrictModel

#: the largest speed (samples/s), bandwidth (bytes/s), period or deadline (s) a config may name: 1e15
MAX_RATE = 1e15


class Constant(StrictModel):
    """Every client gets ``value``."""

    name: Literal["constant"] = "constant"
    value: float = Field(default=1000.0, gt=0, le=MAX_RATE)


class LogNormal(StrictModel):
    """``median * exp(sigma * z)``, ``z ~ N(0, 1)`` per client: the heavy right tail of device speeds that
    FedScale's traces show (Lai et al. 2022); ``sigma = 1`` puts a tenth of the clients 3.6x slower than the median."""

    name: Literal["lognormal"] = "lognormal"
    median: float = Field(default=1000.0, gt=0, le=MAX_RATE)
    sigma: float = Field(default=1.0, ge=0, le=10)


Distribution = Annotated[Union[Constant, LogNormal], Field(discriminator="name")]


class ClientSystems(StrictModel):
    """Each client's compute speed (training samples per second) and network speed (bytes per second, both
    directions), drawn per client from a distribution seeded by the experiment seed, or read from a CSV trace."""

    speed: Distribution = Field(default_factory=lambda: Constant(value=1000.0), description="Training samples per second.")
    bandwidth: Distribution = Field(default_factory=lambda: Constant(value=1e6), description="Bytes per second, up and down.")
    trace: str | None = Field(
        default=None,
        description="CSV with header client,speed,bandwidth and one row per client (replaces speed and bandwidth).",
    )


class AlwaysAvailable(StrictModel):
    """Every client is available all the time."""

    name: Literal["always"] = "always"


class DailyAvailability(StrictModel):
    """Each client is online for ``on_fraction`` of every ``period`` seconds, starting at a phase drawn
    uniformly per client: the diurnal pattern of phones that train only while charging at night (Bonawitz et al. 2019)."""

    name: Literal["daily"] = "daily"
    period: float = Field(default=86400.0, gt=0, le=MAX_RATE, description="Seconds of one on/off cycle.")
    on_fraction: float = Field(default=0.5, gt=0, le=1, description="Share of each period a client is online.")


class TraceAvailability(StrictModel):
    """Availability read from a CSV with header client,start,end: each row an interval (simulated seconds)
    in which that client is online; a client with no row is never online."""

    name: Literal["trace"] = "trace"
    path: str


Availability = Annotated[Union[AlwaysAvailable, DailyAvailability, TraceAvailability], Field(discriminator="name")]


class SyncMode(StrictModel):
    """Synchronous rounds on the clock: the round ends when its slowest kept client has uploaded.

    With ``over_selection`` the server samples ``ceil(K * (1 + over_selection))`` clients and keeps the first
    ``K`` (``server.clients_per_round`` / ``fraction``) to finish; with ``deadline`` a client that has not
    finished that many seconds after the round began is dropped (Bonawitz et al. 2019, "Towards federated
    learning at scale")."""

    name: Literal["sync"] = "sync"
    deadline: float | None = Field(default=None, gt=0, le=MAX_RATE, description="Seconds a round waits at most (None: no deadline).")
    over_selection: float = Field(default=0.0, ge=0, le=10, description="Extra share of clients sampled (0.3: 30% more).")


class ConstantStaleness(StrictModel):
    """Every update weighs 1, however stale."""

    name: Literal["constant"] = "constant"


class PolynomialStaleness(StrictModel):
    """``(1 + s) ** -a`` for staleness ``s`` (FedBuff, Nguyen et al. 2022, uses a = 0.5)."""

    name: Literal["polynomial"] = "polynomial"
    a: float = Field(default=0.5, ge=0, le=100)


class HingeStaleness(StrictModel):
    """1 up to staleness ``b``, then ``1 / (a (s - b) + 1)`` (FedAsync, Xie et al. 2019)."""

    name: Literal["hinge"] = "hinge"
    a: float = Field(default=10.0, ge=0, le=1e6)
    b: int = Field(default=4, ge=0, le=MAX_COUNT)


Staleness = Annotated[Union[ConstantStaleness, PolynomialStaleness, HingeStaleness], Field(discriminator="name")]


class FedBuffMode(StrictModel):
    """Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022): ``concurrency`` clients train at
    once, each on the model version it received; the server takes a step whenever ``buffer_size`` updates
    have arrived, each weighted by ``staleness`` of its age in server steps. ``server.rounds`` counts steps."""

    name: Literal["fedbuff"] = "fedbuff"
    buffer_size: Size = Field(default=10, description="Updates K per server step.")
    concurrency: Size = Field(default=20, description="Clients training at once.")
    staleness: Staleness = Field(default_factory=PolynomialStaleness)
    max_staleness: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="Updates older than this many server steps are dropped (None: none are)."
    )

    @model_validator(mode="after")
    def _buffer_fits(self) -> FedBuffMode:
        if self.buffer_size > self.concurrency:
            raise ValueError(
                f"systems.mode.buffer_size={self.buffer_size} exceeds systems.mode.concurrency={self.concurrency}: "
                "the buffer could never fill; allowed: buffer_size <= concurrency"
            )
        return self


Mode = Annotated[Union[SyncMode, FedBuffMode], Field(discriminator="name")]


class SystemsConfig(StrictModel):
    """The simulated system: who is fast, who is online, and how rounds wait for them."""

    clients: ClientSystems = Field(default_factory=ClientSystems)
    availability: Availability = Field(default_factory=AlwaysAvailable)
    mode: Mode = Field(default_factory=SyncMode)


__all__ = ["MAX_RATE", "SystemsConfig"]
