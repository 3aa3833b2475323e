"""The base every configuration model derives from: frozen, strict, and loud about mistakes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys.

    Frozen so that a resolved configuration can be shared between the server, the clients and
    the engines without anyone changing it under the others' feet; ``extra="forbid"`` so that a
    typo (``lerning_rate``) is an error naming the key instead of a silently ignored setting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
