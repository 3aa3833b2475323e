"""``FlowerSettings``: how a deployed run waits, retries and writes, read from Flower's run config.

Flower passes a flat ``run_config`` (``[tool.flwr.app.config]`` in the app's ``pyproject.toml``,
overridable with ``flwr run --run-config``). The keys below are the deployment's own; everything
about the experiment itself stays in the fedmtl YAML named by ``config``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError


class FlowerSettings(BaseModel):
    """Deployment settings of a fedmtl run on Flower.

    In ``run_config`` the keys are written with dashes (``min-replies``); both spellings are accepted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field(
        default="experiment.yaml",
        description="fedmtl experiment YAML (relative to the app folder, or absolute).",
    )
    overrides: str = Field(
        default="", description="';'-separated fedmtl overrides, e.g. 'server.rounds=5;seed=1'."
    )
    output_dir: str = Field(
        default="runs",
        description="Where the server writes the run folder (relative to the SuperLink's working directory, or absolute).",
    )
    run_name: str = Field(
        default="flower", description="Run folder name; a run that finds checkpoints here resumes them."
    )
    resume: bool = Field(
        default=True, description="Continue from the newest checkpoint in the run folder when there is one."
    )
    min_nodes: PositiveInt = Field(
        default=1, description="Connected, registered SuperNodes required before round 1."
    )
    wait_for_nodes: PositiveFloat = Field(
        default=120.0, description="Seconds to wait for min-nodes (and for registration replies)."
    )
    min_replies: PositiveInt = Field(
        default=1, description="A round needs at least this many valid replies ..."
    )
    min_fraction: float = Field(
        default=0.0, ge=0, le=1, description="... and at least this share of its cohort."
    )
    round_timeout: PositiveFloat = Field(
        default=300.0, description="Seconds a round waits for its cohort's replies."
    )
    max_retries: int = Field(
        default=2, ge=0, description="Re-runs of a round that stayed below the minimum before the run stops."
    )
    quarantine_rounds: int = Field(
        default=3, ge=0, description="Rounds a node that timed out is left out of cohorts."
    )
    poll_interval: PositiveFloat = Field(
        default=0.2, description="Seconds between pulls of replies from the SuperLink."
    )
    downlink_mirrors: int = Field(
        default=0,
        ge=0,
        description="Compressed downlinks (comm.downlink_delta): the most copies of clients' models the server "
        "mirrors, the most recently sent kept; a client without one receives the full model. 0: one per client.",
    )

    def required_replies(self, cohort: int) -> int:
        """Valid replies a round over ``cohort`` clients needs."""
        return max(self.min_replies, math.ceil(self.min_fraction * cohort))

    def override_list(self) -> list[str]:
        return [s.strip() for s in self.overrides.split(";") if s.strip()]

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FlowerSettings:
        """Settings from Flower's run config; unknown keys are refused with the list of known ones."""
        data = {k.replace("-", "_"): v for k, v in run_config.items()}
        try:
            return cls(**data)
        except ValidationError as exc:
            known = ", ".join(k.replace("_", "-") for k in cls.model_fields)
            raise ValueError(f"invalid fedmtl Flower run config: {exc}\nknown keys: {known}") from None


__all__ = ["FlowerSettings"]
