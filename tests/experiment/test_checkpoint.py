"""Checkpoint files: whatever tensors a state holds, they are written and read back unchanged; a damaged one
(a flipped bit, bad metadata) is refused by its checksum and the resume falls back; stale temp files go."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedmtl.fl.client_state import ClientState
from fedmtl.fl.federation import ServerState
from fedmtl.runloop.checkpoint import (
    CheckpointError,
    content_digest,
    load_latest,
    read_checkpoint,
    save_checkpoint,
)


def test_aliased_and_viewed_tensors_are_saved_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An algorithm's state may hold one tensor under two names, or views of one buffer (safetensors refuses both)."""
    pi = torch.tensor([0.25, 0.75])
    buffer = torch.arange(6.0)
    first, second = buffer[:3], buffer[3:]
    tail = torch.arange(10.0)[7:]  # a lone view at an offset into a larger buffer
    params = {"w": torch.ones(2, 2)}
    state = ServerState(
        round=7,
        params=params,
        opt_state={},
        client_states={
            0: ClientState(algorithm={"pi": pi, "personal_pi": pi, "a": first, "b": second}),
            1: ClientState(local={"same_as_global": params["w"]}, algorithm={"tail": tail}),
        },
    )
    back, _ = read_checkpoint(save_checkpoint(tmp_path, state, {}))
    assert back.round == 7
    own = [back.client_states[c].algorithm for c in (0, 1)]
    assert torch.equal(own[0]["pi"], pi) and torch.equal(own[0]["personal_pi"], pi)
    assert torch.equal(own[0]["a"], first) and torch.equal(own[0]["b"], second)
    assert torch.equal(back.client_states[1].local["same_as_global"], params["w"])
    assert torch.equal(own[1]["tail"], torch.tensor([7.0, 8.0, 9.0]))
    assert torch.equal(pi, torch.tensor([0.25, 0.75])) and torch.equal(buffer, torch.arange(6.0))  # the live state is untouched


def _state(round_: int, value: float = 1.0) -> ServerState:
    return ServerState(
        round=round_,
        params={"w": torch.full((4, 3), value), "b": torch.arange(3.0)},
        opt_state={"m": torch.zeros(3, dtype=torch.float64)},
        client_states={2: ClientState(objective={"steps": torch.tensor(5)}, algorithm={"mask": torch.tensor([True, False])})},
    )


def _data_offset(path) -> int:  # type: ignore[no-untyped-def]
    """Where the tensor data of a safetensors file starts (8-byte header length, then the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_the_checksum_is_the_sha256_of_names_dtypes_shapes_bytes_and_metadata(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = save_checkpoint(tmp_path, _state(3), {"elapsed": 1.5})
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    flat = load_file(str(path))
    expected = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(flat):
        t = flat[name]
        expected.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        expected.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert metadata["sha256"] == expected.hexdigest() == content_digest(flat, metadata)
    # the same values under another dtype or shape have another checksum
    assert content_digest({**flat, "params/b": flat["params/b"].double()}, metadata) != metadata["sha256"]
    assert content_digest({**flat, "params/w": flat["params/w"].reshape(3, 4)}, metadata) != metadata["sha256"]


@pytest.mark.parametrize("where", [0, 17, -1])
def test_a_flipped_bit_in_the_tensor_data_is_caught(tmp_path, where) -> None:  # type: ignore[no-untyped-def]
    path = save_checkpoint(tmp_path, _state(3), {})
    raw = bytearray(path.read_bytes())
    start = _data_offset(path)
    at = start + where if where >= 0 else len(raw) + where
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"round-000003.safetensors.*does not match its SHA-256 checksum"):
        read_checkpoint(path)


def test_every_single_bit_flip_is_refused_or_reads_back_the_saved_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Exhaustive over the file's bytes (one bit each): header or data, a flip never loads a different state."""
    path = save_checkpoint(tmp_path, _state(3), {"elapsed": 2.0})
    good = path.read_bytes()
    original, _ = read_checkpoint(path)
    outcomes = {"refused": 0, "same": 0}
    for at in range(len(good)):
        raw = bytearray(good)
        raw[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(raw))
        try:
            back, meta = read_checkpoint(path)
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        # a flip in JSON whitespace or padding may leave the content intact: then it must read back the same
        assert back.round == 3 and meta == {"elapsed": 2.0}
        assert all(torch.equal(back.params[k], original.params[k]) for k in original.params)
        outcomes["same"] += 1
    assert outcomes == {"refused": len(good), "same": 0}  # measured over all 8 bits of every byte too (docs/reliability.md)


def test_bad_meta_json_falls_back_to_the_previous_checkpoint(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    save_checkpoint(tmp_path, _state(1, 1.0), {"elapsed": 1.0}, keep=3)
    newest = save_checkpoint(tmp_path, _state(2, 2.0), {"elapsed": 2.0}, keep=3)
    flat = load_file(str(newest))
    metadata = {"format": "1", "round": "2", "meta": "{not json"}
    metadata["sha256"] = content_digest(flat, metadata)  # intact checksum: the meta itself is bad
    save_file(flat, str(newest), metadata=metadata)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        state, meta = load_latest(tmp_path)
    assert state.round == 1 and meta == {"elapsed": 1.0} and torch.equal(state.params["w"], torch.full((4, 3), 1.0))
    assert "round-000002.safetensors" in caplog.text and "trying an older checkpoint" in caplog.text


def test_no_intact_checkpoint_stops_the_resume_naming_each_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    paths = [save_checkpoint(tmp_path, _state(r), {}, keep=3) for r in (1, 2)]
    for path in paths:
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0x80
        path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="no checkpoint is intact") as info:
        load_latest(tmp_path)
    assert all(p.name in str(info.value) for p in paths)


def test_a_checkpoint_without_a_checksum_still_loads_and_says_so(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = save_checkpoint(tmp_path, _state(4), {"elapsed": 3.0})
    flat = load_file(str(path))
    save_file(flat, str(path), metadata={"format": "1", "round": "4", "meta": json.dumps({"elapsed": 3.0})})  # as fedmtl wrote them before
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        state, meta = read_checkpoint(path)
    assert state.round == 4 and meta == {"elapsed": 3.0}
    assert "has no checksum" in caplog.text and "unverified" in caplog.text


def test_stale_temp_files_are_removed_on_resume_and_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    save_checkpoint(tmp_path, _state(1), {})
    folder = tmp_path / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = folder / f".round-000002.safetensors.tmp-{int(dead.stdout)}"  # a writer that died mid-write
    own = folder / f".round-000003.safetensors.tmp-{os.getpid()}"  # a previous process under this id (a restarted container)
    live = folder / f".round-000004.safetensors.tmp-{os.getppid()}"  # a live process's write in flight: kept
    other = folder / "notes.tmp-1"  # not a temp file of an atomic write: kept
    for p in (stale, own, live, other):
        p.write_bytes(b"half a checkpoint")
    state, _ = load_latest(tmp_path)
    assert state.round == 1
    assert not stale.exists() and not own.exists() and live.exists() and other.exists()
    stale.write_bytes(b"again")
    save_checkpoint(tmp_path, _state(2), {})
    assert not stale.exists() and live.exists()


def test_a_damaged_saved_config_stops_the_resume_with_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedmtl.config import ConfigError, ExperimentConfig
    from fedmtl.runloop.checkpoint import check_resumable

    (tmp_path / "config.yaml").write_bytes(b"seed: 0\n\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"config.yaml' is not UTF-8 text"):
        check_resumable(tmp_path, ExperimentConfig())


def damage_checkpoints(path, n: int, seed: int = 17) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """``n`` damaged copies of a checkpoint (cut short, random bytes, 2-20 bytes replaced, junk appended, in
    turn) written over ``path``; how many loaded and how many were refused. docs/reliability.md: n = 2000."""
    good = path.read_bytes()
    rng = random.Random(seed)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(n):
        if i % 4 == 0:
            raw = good[: rng.randrange(len(good))]
        elif i % 4 == 1:
            raw = rng.randbytes(rng.randint(0, 1000))
        elif i % 4 == 2:
            mutable = bytearray(good)
            for _ in range(rng.randint(2, 20)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            raw = bytes(mutable)
        else:
            raw = good + rng.randbytes(rng.randint(1, 50))
        path.write_bytes(raw)
        try:
            read_checkpoint(path)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    return outcomes


def test_randomly_damaged_checkpoints_are_refused_not_raised(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert damage_checkpoints(save_checkpoint(tmp_path, _state(3), {"elapsed": 2.0}), 400) == {"loaded": 0, "refused": 400}


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@st.composite
def states(draw) -> ServerState:  # type: ignore[no-untyped-def]
    def tensor() -> torch.Tensor:
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        dtype = draw(st.sampled_from(DTYPES))
        seed = draw(st.integers(0, 2**31 - 1))
        values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
        return values > 0 if dtype is torch.bool else values.to(dtype)

    names = st.text("abcxyz", min_size=1, max_size=4)
    params = {n: tensor() for n in draw(st.sets(names, min_size=1, max_size=4))}
    def client() -> ClientState:
        return ClientState(**{slot: {n: tensor() for n in draw(st.sets(names, max_size=2))} for slot in ("objective", "algorithm", "codec")})

    clients = {c: client() for c in draw(st.sets(st.integers(0, 50), max_size=3))}
    return ServerState(round=draw(st.integers(0, 10**6)), params=params, opt_state={}, client_states=clients)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=states(), where=st.integers(0, 2**31), bit=st.integers(0, 7))
def test_any_state_round_trips_verified_and_any_flipped_data_bit_is_refused(tmp_path, state, where, bit) -> None:  # type: ignore[no-untyped-def]
    path = save_checkpoint(Path(tempfile.mkdtemp(dir=tmp_path)), state, {"elapsed": 1.0})  # a fresh run folder per example
    back, meta = read_checkpoint(path)
    assert back.round == state.round and meta == {"elapsed": 1.0}
    for name, value in state.params.items():
        assert back.params[name].dtype == value.dtype and torch.equal(back.params[name], value)
    assert set(back.client_states) == set(state.client_states)
    for c, cs in state.client_states.items():
        for slot in ("objective", "algorithm", "codec"):
            mine, theirs = getattr(cs, slot), getattr(back.client_states[c], slot)
            assert set(mine) == set(theirs) and all(torch.equal(theirs[n], v) and theirs[n].dtype == v.dtype for n, v in mine.items())
    start, raw = _data_offset(path), bytearray(path.read_bytes())
    if len(raw) > start:
        raw[start + where % (len(raw) - start)] ^= 1 << bit
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match="checksum"):
            read_checkpoint(path)


def test_a_fresh_run_starts_in_a_folder_holding_only_a_stale_temp_file(tmp_path) -> None:  # noqa: ANN001
    """An interrupted first write leaves only `.x.tmp-PID`: that is not a run, and a fresh start clears it."""
    import fedmtl

    ckpt = tmp_path / "named" / "checkpoints"
    ckpt.mkdir(parents=True)
    stale = ckpt / ".round-000001.safetensors.tmp-999999999"  # no such process
    stale.write_bytes(b"partial")
    cfg = {
        "data": {"source": {"name": "mnist1d", "tasks": ["digit"], "num_samples": 300}, "num_clients": 4},
        "server": {"rounds": 1},
        "output": {"dir": str(tmp_path), "name": "named", "plots": False},
    }
    res = fedmtl.Experiment(cfg).run(progress=False)
    assert res.summary["rounds_completed"] == 1 and not stale.exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_round_zero(tmp_path) -> None:  # noqa: ANN001
    """Its folder holds a config, a metrics line or none, no checkpoint: resume starts it over, to the same end."""
    import fedmtl

    cfg = {
        "data": {"source": {"name": "mnist1d", "tasks": ["digit"], "num_samples": 300}, "num_clients": 4},
        "server": {"rounds": 2},
        "output": {"dir": str(tmp_path), "name": "whole", "plots": False},
    }
    whole = fedmtl.Experiment(cfg).run(progress=False)
    cut = fedmtl.Experiment({**cfg, "output": {**cfg["output"], "name": "cut"}}).run(progress=False)
    for f in (cut.run_dir / "checkpoints").iterdir():  # as if killed while writing the first checkpoint
        f.unlink()
    (cut.run_dir / "summary.json").unlink()
    resumed = fedmtl.Experiment(cfg).run(resume=cut.run_dir, progress=False)
    assert resumed.summary["rounds_completed"] == 2
    assert all(bool((whole.params[k] == resumed.params[k]).all()) for k in whole.params)
