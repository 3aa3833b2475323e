"""Atomic file writes: readers see the old content or the new, never a torn mix.

A write goes to ``.<name>.tmp-<pid>`` beside its target and is renamed over it; a process killed
mid-write leaves that temporary file behind, which :func:`remove_stale_temps` clears at the next start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fedmtl")
#: the name of an atomic write's temporary file; group 1 is the writer's process id
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path``'s new content before renaming it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``; return them.

    A temporary file is stale when its writer is no longer running, or is this process (call this
    when none of this process's writes is under way: at start-up or resume; a container restarted
    under the same process id sees its predecessor's files as its own). The files of another live
    process are kept: it may be writing them now.
    """
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = TEMP_PATTERN.match(path.name)
        if match is None or not path.is_file() or _alive_other(int(match.group(1))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) of interrupted writes: %s", len(removed), ", ".join(str(p) for p in removed))
    return removed


def _alive_other(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False  # no such process (or an id no process can have)
    except OSError:
        return True  # another user's live process: leave its file alone
    return True
