"""Systems behaviour on a simulated clock: client speeds and bandwidths, availability, stragglers, and
asynchronous buffered aggregation (docs/systems.md).

:func:`build_systems` wraps a :class:`~fedmtl.fl.federation.Federation` in the driver its
``systems.mode`` names: :class:`SyncRounds` (synchronous rounds with a deadline and over-selection) or
:class:`FedBuff` (Nguyen et al. 2022).
"""

from __future__ import annotations

from fedmtl.config.systems import FedBuffMode, SystemsConfig
from fedmtl.fl.federation import Federation
from fedmtl.fl.systems.availability import Always, Availability, Daily, Trace, build_availability
from fedmtl.fl.systems.driver import Driver, Rounds, clock_of
from fedmtl.fl.systems.fedbuff import FedBuff
from fedmtl.fl.systems.profiles import Profiles
from fedmtl.fl.systems.staleness import build_staleness, constant, hinge, polynomial
from fedmtl.fl.systems.sync import Settled, SyncRounds, settle


def build_systems(cfg: SystemsConfig, fed: Federation) -> Driver:
    """The round driver ``cfg.mode`` names, over ``fed``'s steps."""
    if isinstance(cfg.mode, FedBuffMode):
        return FedBuff(cfg, fed)
    return SyncRounds(cfg, fed)


__all__ = [
    "Always",
    "Availability",
    "Daily",
    "Driver",
    "FedBuff",
    "Profiles",
    "Rounds",
    "Settled",
    "SyncRounds",
    "Trace",
    "build_availability",
    "build_staleness",
    "build_systems",
    "clock_of",
    "constant",
    "hinge",
    "polynomial",
    "settle",
]
