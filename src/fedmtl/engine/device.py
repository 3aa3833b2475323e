"""Where local training runs: ``runtime.device`` resolved against the machine, checked before any work."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device the machine does not have; the message says what it has."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first GPU when CUDA is available, else the CPU; ``cuda`` / ``cuda:N`` only when present.

    Raises:
        DeviceError: ``cuda`` without a GPU, or ``cuda:N`` beyond the GPUs there are.
    """
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda"):
        raise DeviceError(f"runtime.device {spec!r}: allowed are auto, cpu, cuda and cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"runtime.device {spec!r}: this machine has no CUDA GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use runtime.device=cpu or auto"
        )
    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"runtime.device {spec!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def rank_device(spec: str, local_rank: int | None = None) -> torch.device:
    """:func:`resolve_device` for one ``torchrun`` rank: ``auto`` and ``cuda`` (no index) mean this rank's own GPU,
    ``cuda:LOCAL_RANK`` (modulo the GPUs there are), so that the ranks of a node do not all share ``cuda:0``;
    an explicit ``cuda:N`` and ``cpu`` are kept. ``local_rank`` defaults to torchrun's ``LOCAL_RANK``."""
    import os

    device = resolve_device(spec)
    if device.type != "cuda" or spec.startswith("cuda:"):
        return device
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    return torch.device("cuda", rank % torch.cuda.device_count())
