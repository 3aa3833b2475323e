"""``flower-supernode`` with a shorter idle wait: ``python -m fedmtl.integrations.flower.supernode --idle-poll 0.2 ...``.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever it asks the SuperLink for a message and finds none,
and 0.5 s between looks for its ClientApp's reply. In a round loop every node has just replied and
finds nothing (the server is still aggregating), so each round waits most of those 3 s: with warm
ClientApps that is most of a round (see docs/deployment.md). ``--idle-poll S`` caps both waits at S
seconds; the price is S-periodic requests to the SuperLink from every idle node (0.2 s: 5 per second
per node). Every other argument is ``flower-supernode``'s.

The waits are module-level ``time.sleep`` calls in ``flwr.supernode.start_client_internal``; this
wrapper replaces that module's ``time`` with one whose ``sleep`` is capped, and refuses any Flower
version other than the one it was written against.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable

FLOWER_VERSION = "1.41.0"


def capped_time(cap: float, sleep: Callable[[float], None] = time.sleep) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never waits longer than ``cap`` seconds."""
    if not cap > 0:
        raise ValueError(f"--idle-poll must be > 0 seconds, got {cap}")
    module = types.ModuleType("time")
    module.__dict__.update(time.__dict__)
    module.sleep = lambda seconds: sleep(min(seconds, cap))  # type: ignore[attr-defined]
    return module


def patch_idle_wait(cap: float) -> None:
    """Cap the SuperNode loop's waits at ``cap`` seconds (refused on another Flower version)."""
    import flwr
    import flwr.supernode.start_client_internal as loop

    if flwr.__version__ != FLOWER_VERSION or getattr(loop, "time", None) is not time:
        raise RuntimeError(
            f"--idle-poll was written for flwr=={FLOWER_VERSION} (found {flwr.__version__}); "
            "run flower-supernode without it"
        )
    loop.time = capped_time(cap)  # type: ignore[attr-defined]


def split_idle_poll(argv: list[str]) -> tuple[float | None, list[str]]:
    """``--idle-poll S`` (or ``--idle-poll=S``) taken out of ``argv``; the rest is flower-supernode's."""
    rest: list[str] = []
    value: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--idle-poll":
            value = next(it, None)
            if value is None:
                raise ValueError("--idle-poll needs a number of seconds")
        elif arg.startswith("--idle-poll="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if value is None:
        return None, rest
    try:
        return float(value), rest
    except ValueError:
        raise ValueError(f"--idle-poll must be a number of seconds, got {value!r}") from None


def main() -> None:
    cap, rest = split_idle_poll(sys.argv[1:])
    if cap is not None:
        patch_idle_wait(cap)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["capped_time", "main", "patch_idle_wait", "split_idle_poll"]
