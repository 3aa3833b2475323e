"""A Flower node's client state on its own disk, so that it survives the SuperNode restarting.

A client's state (objective and balancer state, codec error-feedback residuals, personal and local
parameters) used to live in the SuperNode's ``Context.state``, in memory: a restarted SuperNode came
back with none and silently started afresh. Here it is one file per client, written atomically after
each round and checked on load (:mod:`fedmtl.checked_file`)::

    <state-dir>/<experiment key>/client-<partition-id>.safetensors

* the **experiment key** hashes what a client's state depends on (seed, data, model, objective, client,
  algorithm, comm, privacy) and the server's run key (kept in the run folder, sent at registration), so a
  run resumed from its checkpoint (even with more rounds) finds its clients' state, while a fresh run or
  another experiment never reads it;
* the file records the **partition id** it belongs to: a node started with another ``partition-id``
  over this folder is refused (its identity is its partition, whatever node id Flower gives it);
* a **damaged** file (unreadable, failing its checksum) is moved aside to ``*.damaged`` and the client
  starts afresh with a warning naming it: never silently.

The folder is the node config's ``state-dir``, else ``$FEDMTL_FLOWER_STATE``, else ``state/`` in the
node's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedmtl.atomic import remove_stale_temps
from fedmtl.checked_file import DamagedFile, read_checked, write_checked
from fedmtl.config import ExperimentConfig
from fedmtl.fl.client_state import ClientState
from fedmtl.tree import flatten, unflatten

log = logging.getLogger("fedmtl")
#: 2: one sub-tree per owner (fedmtl.fl.client_state); a file of format 1 (flat) is converted on load
FORMAT = "fedmtl-flower-client-state/2"
LEGACY_FORMAT = "fedmtl-flower-client-state/1"
#: the config sections a client's state depends on (not rounds, evaluation, output, runtime or tracking)
STATE_SECTIONS = frozenset({"seed", "data", "model", "mtl", "client", "algorithm", "comm", "privacy"})


class NodeIdentityError(RuntimeError):
    """The state folder holds another client's state under this client's name."""


def experiment_key(cfg: ExperimentConfig, run_key: str) -> str:
    """16 hex digits of the SHA-256 of the config sections a client's state depends on and the server's run key."""
    sections = cfg.model_dump(mode="json", include=set(STATE_SECTIONS))
    return hashlib.sha256(json.dumps([sections, run_key], sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Restored:
    """A client's state as loaded: the tree, the rounds it had trained in, the file's checksum."""

    state: ClientState
    rounds: int
    checksum: str


@dataclass(frozen=True)
class NodeStateStore:
    """Where one client keeps its state on its node."""

    folder: Path
    partition: int
    key: str

    @property
    def path(self) -> Path:
        return self.folder / self.key / f"client-{self.partition}.safetensors"

    def save(self, state: ClientState, rounds: int) -> str:
        """Write the state after ``rounds`` rounds of training; returns its checksum."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": FORMAT, "partition": str(self.partition), "key": self.key, "rounds": str(rounds)}
        return write_checked(self.path, flatten(state.to_tree()), metadata)

    def load(self) -> Restored | None:
        """The saved state, or None when there is none (or it was damaged: moved aside, logged)."""
        remove_stale_temps(self.path.parent)
        if not self.path.exists():
            return None
        try:
            flat, meta = read_checked(self.path)
            if meta.get("format") not in (FORMAT, LEGACY_FORMAT):
                raise DamagedFile(f"{str(self.path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
            rounds = int(meta["rounds"])
            owner = int(meta["partition"])
            read = ClientState.from_legacy if meta["format"] == LEGACY_FORMAT else ClientState.from_tree
            state = read(unflatten(flat))
        except (DamagedFile, KeyError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.{int(time.time())}.damaged")
            os.replace(self.path, aside)
            log.warning("client %d: its saved state is damaged (%s); moved to %s, starting afresh", self.partition, exc, aside)
            return None
        if owner != self.partition or meta.get("key") != self.key:
            raise NodeIdentityError(
                f"{str(self.path)!r} holds the state of client {owner} (experiment {meta.get('key')}), not of client "
                f"{self.partition} (experiment {self.key}): is this node's partition-id right?"
            )
        return Restored(state, rounds, meta["sha256"])


def state_folder(node_config: dict[str, object], cache_dir: str | None) -> Path:
    """The node's state folder: node config ``state-dir``, ``$FEDMTL_FLOWER_STATE``, or ``<cache>/state``."""
    value = node_config.get("state-dir") or os.environ.get("FEDMTL_FLOWER_STATE")
    if value:
        return Path(str(value)).expanduser()
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "fedmtl-flower-cache"
    return base / "state"


__all__ = ["NodeIdentityError", "NodeStateStore", "Restored", "experiment_key", "state_folder"]
