"""Deployment on Flower's runtime (SuperLink and SuperNodes): fedmtl's maths, Flower's transport.

``make_server_app()`` and ``make_client_app()`` build a Flower ``ServerApp`` and ``ClientApp`` from
a fedmtl experiment config; :mod:`fedmtl.integrations.flower.launch` starts a local federation of
real processes (with or without TLS). Needs the ``flower`` extra: ``pip install 'fedmtl[flower]'``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fedmtl.integrations.flower needs Flower: pip install 'fedmtl[flower]' (flwr==1.41.0)"
    ) from exc

from fedmtl.integrations.flower.client_app import make_client_app
from fedmtl.integrations.flower.server_app import make_server_app
from fedmtl.integrations.flower.settings import FlowerSettings
from fedmtl.integrations.flower.strategy import FlowerServer, RoundFailed

__all__ = ["FlowerServer", "FlowerSettings", "RoundFailed", "make_client_app", "make_server_app"]
