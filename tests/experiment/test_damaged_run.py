"""A whole run resumed from a damaged folder: a flipped bit in the newest checkpoint, a damaged line in
metrics.jsonl and the temp file of an interrupted write; it resumes from the last intact checkpoint and
ends exactly where an undamaged run ends, with the damaged metrics file kept byte for byte."""

from __future__ import annotations

import logging

import torch

import fedmtl
from fedmtl.runloop.checkpoint import list_checkpoints


def test_a_damaged_run_folder_resumes_exactly_and_keeps_what_it_set_aside(tiny_config, caplog):
    output = tiny_config["output"]
    full = fedmtl.Experiment({**tiny_config, "output": {**output, "name": "full", "keep_checkpoints": 3}}).run(progress=False)

    cfg = {**tiny_config, "output": {**output, "name": "damaged", "keep_checkpoints": 3}}
    first = fedmtl.Experiment(cfg).run(progress=False)
    newest = list_checkpoints(first.run_dir)[0]
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0x10  # one bit of the tensor data: safetensors alone reads it back without complaint
    newest.write_bytes(bytes(raw))
    metrics = first.run_dir / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    lines[0] = b'{"round": "abc"}'
    damaged = b"\n".join(lines)
    metrics.write_bytes(damaged)
    stale = newest.parent / ".round-000004.safetensors.tmp-999999999"
    stale.write_bytes(b"half")

    with caplog.at_level(logging.INFO, logger="fedmtl"):
        resumed = fedmtl.Experiment(cfg).run(resume=first.run_dir, progress=False)

    assert "does not match its SHA-256 checksum" in caplog.text and newest.name in caplog.text
    assert "line 1: 'round' is 'abc'" in caplog.text
    assert (first.run_dir / "metrics.jsonl.damaged-1").read_bytes() == damaged
    assert not stale.exists()
    assert resumed.summary["rounds_completed"] == 3
    for name, value in full.params.items():  # round 3 recomputed from round 2's checkpoint: bit-identical
        assert torch.equal(value, resumed.params[name]), name
    assert [r["round"] for r in resumed.history] == [2, 3]  # round 1's line is in the backup, not lost
