"""Configuration of privacy and security: secure aggregation and differential privacy."""

from __future__ import annotations

from fedmtl.config.base import StrictModel


class PrivacyConfig(StrictModel):
    """Off by default; see the privacy issue for secure aggregation and DP settings."""
