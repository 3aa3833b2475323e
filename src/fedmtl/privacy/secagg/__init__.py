"""Secure aggregation (Bonawitz et al., CCS 2017; SecAgg+ of Bell et al., CCS 2020), simulated in process."""

from fedmtl.privacy.secagg.aggregate import SecAggResult, sample_dropouts, secure_aggregate
from fedmtl.privacy.secagg.protocol import (
    ProtocolOutput,
    ProtocolStats,
    SecAggClient,
    SecAggError,
    run_protocol,
)

__all__ = [
    "ProtocolOutput",
    "ProtocolStats",
    "SecAggClient",
    "SecAggError",
    "SecAggResult",
    "run_protocol",
    "sample_dropouts",
    "secure_aggregate",
]
