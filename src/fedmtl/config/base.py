"""The base every configuration model derives from, and the bounded number types its fields use.

Every number in a configuration is checked before anything is built: ``allow_inf_nan=False`` on
:class:`StrictModel` refuses ``nan`` and ``inf`` in every float field of every section (an infinite
noise multiplier would hang the privacy accountant, an infinite learning rate poison the model), and
every integer field has an upper bound: one of the types below, or a tighter bound of its own. The
bounds are far above what a run needs and far below what would exhaust memory or overflow a
generator; docs/configuration.md lists them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: numpy's legacy ``RandomState`` (which the mnist1d generator seeds) takes seeds in ``[0, 2**32)``;
#: torch generators take more, so this is the bound every generator the run seeds accepts
MAX_SEED = 2**32 - 1
#: rows, clients, batch sizes, classes, bucket sizes, MiB: 2**20 = 1,048,576 (one batch of that many
#: rows of 1,000 float32 features already takes 4 GiB)
MAX_SIZE = 2**20
#: layer widths, channels, experts, kernel sizes: 2**16 = 65,536 (one 65,536 x 65,536 layer holds 16 GiB)
MAX_WIDTH = 2**16
#: rounds, epochs, steps, evaluation and checkpoint periods: 10**6
MAX_COUNT = 10**6

#: the experiment's seed
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: a positive number of rows, clients, classes or MiB
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
#: a positive layer width, channel count, expert count or kernel size
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
#: a positive number of rounds, epochs or steps
Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys and non-finite numbers.

    Frozen so that a resolved configuration can be shared between the server, the clients and
    the engines without anyone changing it under the others' feet; ``extra="forbid"`` so that a
    typo (``lerning_rate``) is an error naming the key instead of a silently ignored setting;
    ``allow_inf_nan=False`` so that ``.inf`` or ``.nan`` in any float field is an error naming it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)
