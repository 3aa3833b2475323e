"""Checkpoints: one safetensors file per saved round, written atomically.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over its final name (``os.replace`` is atomic), so a crash mid-write leaves the previous
checkpoints intact and never a half-written one under a checkpoint's name; the temporary files of
such crashes are removed at the next save or resume.

safetensors checks a file's layout, not its values, so each checkpoint also carries the SHA-256 of
its content (every tensor's name, dtype, shape and bytes, and the metadata) in its metadata
(``sha256``), checked on load: a flipped bit anywhere in the tensor data is caught. Loading takes the
newest checkpoint that reads back whole and matches its checksum, and falls back to older ones,
saying so, if the newest is damaged. Checkpoints written before the checksum existed still load,
unverified (logged).

Format 2 stores each client's state as one sub-tree per owner (:class:`~fedmtl.fl.client_state.ClientState`);
a format-1 checkpoint (flat client states) is converted as it is read, so a run checkpointed before resumes
exactly; any other format is refused, naming it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedmtl.atomic import atomic_write, remove_stale_temps
from fedmtl.checked_file import CHECKSUM_KEY, content_digest
from fedmtl.config import ConfigError, ExperimentConfig, dump_config
from fedmtl.config.loading import parse_yaml, read_text_file
from fedmtl.fl.client_state import client_states_from_tree, client_states_to_tree
from fedmtl.fl.federation import ServerState
from fedmtl.fl.systems.queue import upgrade_legacy_entries
from fedmtl.tree import TensorTree, flatten, unflatten, unshared

log = logging.getLogger("fedmtl")
PATTERN = re.compile(r"^round-(\d{6})\.safetensors$")
#: 2: client states as one sub-tree per owner (fedmtl.fl.client_state); 1 (flat client states) is converted on load
FORMAT_VERSION = "2"
READABLE_FORMATS = ("1", FORMAT_VERSION)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not belong to this run."""


#: what may differ between a run's saved config.yaml and the config that resumes it (and everything below)
RESUMABLE_CHANGES = ("evaluation", "output", "server.rounds", "tracking")


def config_changes(before: Any, now: Any, prefix: str = "", new_keys: bool = True) -> list[str]:
    """Dotted keys whose values differ between two nested dicts.

    ``new_keys=False`` leaves out the keys ``before`` does not have at all (a field added to the config
    after ``before`` was written); a section whose ``name`` changed is still reported, both have that key.
    """
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(set(before) | set(now)) if new_keys else sorted(set(before))
        return [k for key in keys for k in config_changes(before.get(key), now.get(key), f"{prefix}{key}.", new_keys)]
    return [prefix.rstrip(".")] if before != now else []


def check_resumable(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse to resume ``run_dir`` with a config that differs from its ``config.yaml`` beyond
    :data:`RESUMABLE_CHANGES` (the simulation and the Flower server both resume through this)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    # a field the saved config lacks was added to fedmtl after the run started: whatever the config
    # says of it now is accepted (check_algorithm_state then refuses a checkpoint lacking the state it needs)
    before = parse_yaml(read_text_file(saved), f"the run's saved configuration {str(saved)!r}")
    changed = config_changes(before, yaml.safe_load(dump_config(cfg)), new_keys=False)
    changed = [k for k in changed if not any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with a different configuration; changed: {changed}. "
            f"Only {list(RESUMABLE_CHANGES)} may change on resume."
        )


def check_algorithm_state(restored: ServerState, fresh: TensorTree, algorithm: str) -> None:
    """Refuse a checkpoint whose algorithm state lacks a part that the configured algorithm keeps
    (``fresh``: its initial state), before anything is written: the run was started under another
    algorithm configuration, typically a field added to fedmtl since (FedEM's ``gate``), whose new
    default needs state the run never had."""
    missing = sorted(set(fresh) - set(restored.algorithm_state))
    if missing:
        raise CheckpointError(
            f"the checkpoint's algorithm state has no {missing}, which algorithm {algorithm!r} as configured keeps: "
            "the run was started under another configuration of it (a field added since, at its new default?); "
            "resume with the settings the run was started with"
        )


#: every key a checkpoint's metadata may hold (those written before the checksum lack it)
METADATA_KEYS = frozenset({"format", "round", "meta", CHECKSUM_KEY})


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, state: ServerState, meta: dict[str, Any], keep: int = 2) -> Path:
    """Save ``state`` as ``checkpoints/round-NNNNNN.safetensors`` and prune to the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tree = {
        "params": state.params,
        "opt": state.opt_state,
        "clients": client_states_to_tree(state.client_states),
        "privacy": state.privacy_state,
        "algorithm": state.algorithm_state,
        "systems": state.systems_state,
    }
    flat = unshared(flatten(tree))
    metadata = {"format": FORMAT_VERSION, "round": str(state.round), "meta": json.dumps(meta)}
    metadata[CHECKSUM_KEY] = content_digest(flat, metadata)
    path = folder / f"round-{state.round:06d}.safetensors"
    remove_stale_temps(folder)
    atomic_write(path, lambda p: save_file(flat, str(p), metadata=metadata))
    existing = sorted(p for p in folder.iterdir() if PATTERN.match(p.name))
    for old in existing[:-keep]:
        old.unlink()
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if PATTERN.match(p.name)), reverse=True)


def read_checkpoint(path: Path) -> tuple[ServerState, dict[str, Any]]:
    """Read one checkpoint; a damaged file (unreadable, failing its checksum, bad metadata) raises
    :class:`CheckpointError` naming it."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: {exc}") from None
    if metadata.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {metadata.get('format')!r}, expected one of {list(READABLE_FORMATS)}")
    legacy = metadata["format"] == "1"
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:  # e.g. a flipped bit in the checksum's own key, which would otherwise pass as an old, unverified file
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: unknown metadata keys {unknown}")
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        log.info("checkpoint %s has no checksum (written before fedmtl stored one): loaded unverified", path)
    elif content_digest(flat, metadata) != stored:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its content does not match its SHA-256 checksum")
    try:
        meta = json.loads(metadata.get("meta", "{}"))
        if not isinstance(meta, dict):
            raise ValueError(f"meta is a {type(meta).__name__}, not a mapping")
        tree = unflatten(flat)
        clients = client_states_from_tree(tree.get("clients", {}), legacy=legacy)
        systems = tree.get("systems", {})
        state = ServerState(
            round=int(metadata["round"]),
            params=dict(tree.get("params", {})),  # type: ignore[arg-type]
            opt_state=tree.get("opt", {}),  # type: ignore[arg-type]
            client_states=clients,
            privacy_state=tree.get("privacy", {}),  # type: ignore[arg-type]
            algorithm_state=tree.get("algorithm", {}),  # type: ignore[arg-type]
            systems_state=upgrade_legacy_entries(systems) if legacy else systems,  # type: ignore[arg-type]
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: unreadable metadata or layout ({exc!r})") from None
    return state, meta


def load_latest(run_dir: Path) -> tuple[ServerState, dict[str, Any]]:
    """The newest readable checkpoint of a run (damaged newer ones skipped with a warning naming each);
    first removes the temporary files of interrupted checkpoint writes."""
    remove_stale_temps(checkpoint_dir(run_dir))
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{str(run_dir)!r} holds no checkpoint to resume from")
    errors = []
    for path in candidates:
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            errors.append(str(exc))
    raise CheckpointError(
        f"cannot resume {str(run_dir)!r}: no checkpoint is intact (" + "; ".join(errors) + "); "
        "start the run afresh in another folder"
    )
