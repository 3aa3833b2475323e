"""Checkpoint files: whatever tensors a state holds, they are written and read back unchanged."""

from __future__ import annotations

import torch

from fedmtl.experiment.checkpoint import read_checkpoint, save_checkpoint
from fedmtl.fl.federation import ServerState


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
        client_states={0: {"pi": pi, "personal_pi": pi, "a": first, "b": second}, 1: {"same_as_global": params["w"], "tail": tail}},
    )
    back, _ = read_checkpoint(save_checkpoint(tmp_path, state, {}))
    assert back.round == 7
    assert torch.equal(back.client_states[0]["pi"], pi) and torch.equal(back.client_states[0]["personal_pi"], pi)
    assert torch.equal(back.client_states[0]["a"], first) and torch.equal(back.client_states[0]["b"], second)
    assert torch.equal(back.client_states[1]["same_as_global"], params["w"])
    assert torch.equal(back.client_states[1]["tail"], torch.tensor([7.0, 8.0, 9.0]))
    assert torch.equal(pi, torch.tensor([0.25, 0.75])) and torch.equal(buffer, torch.arange(6.0))  # the live state is untouched
