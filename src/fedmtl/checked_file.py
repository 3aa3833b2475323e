"""Tensor files that are written atomically and carry the SHA-256 of their content, checked on read.

safetensors checks a file's layout, not its values; the digest here covers the metadata and every
tensor's name, dtype, shape and bytes, so a flipped bit anywhere is caught. Server checkpoints and a
Flower node's client state both use it: whoever reads a damaged file gets :class:`DamagedFile`
naming it, never a silently wrong tensor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedmtl.atomic import atomic_write

CHECKSUM_KEY = "sha256"


class DamagedFile(ValueError):
    """A checked file that cannot be read back whole or does not match its checksum."""


def content_digest(flat: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 (hex) of a file's content: its metadata (but the checksum itself) and every tensor's
    name, dtype, shape and bytes, in name order; independent of how safetensors lays the file out."""
    digest = hashlib.sha256()
    head = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for name in sorted(flat):
        tensor = flat[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_checked(path: Path, flat: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Write ``flat`` with ``metadata`` and their checksum to ``path`` atomically; returns the checksum."""
    meta = dict(metadata)
    meta[CHECKSUM_KEY] = content_digest(flat, meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in flat.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    return meta[CHECKSUM_KEY]


def read_checked(path: Path, require_checksum: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of ``path``; :class:`DamagedFile` when it is unreadable or fails its checksum.

    ``require_checksum=False`` accepts a file written without one (loaded unverified: say so to the user).
    """
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedFile(f"{str(path)!r} is damaged: {exc}") from None
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None and require_checksum:
        raise DamagedFile(f"{str(path)!r} is damaged: it has no {CHECKSUM_KEY} checksum")
    if stored is not None and content_digest(flat, metadata) != stored:
        raise DamagedFile(f"{str(path)!r} is damaged: its content does not match its SHA-256 checksum")
    return flat, metadata


__all__ = ["CHECKSUM_KEY", "DamagedFile", "content_digest", "read_checked", "write_checked"]
