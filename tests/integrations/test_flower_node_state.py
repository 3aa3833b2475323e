"""A node's client state on disk: written atomically, checked on load, tied to the node's partition."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch
from _flower_fakes import SMALL

from fedmtl.checked_file import write_checked
from fedmtl.config import config_from_dict
from fedmtl.fl.client_state import ClientState
from fedmtl.integrations.flower.node_state import (
    LEGACY_FORMAT,
    NodeIdentityError,
    NodeStateStore,
    experiment_key,
    state_folder,
)
from fedmtl.tree import flatten

pytestmark = pytest.mark.flower

#: the same client state in the flat layout of format 1 and typed (one sub-tree per owner)
FLAT = {
    "codec": {"residual": {"trunk.0.weight": torch.arange(6.0).reshape(2, 3)}},
    "personal": {"heads.digit.weight": torch.full((2, 2), 0.5)},
    "objective": {"weights": torch.tensor([0.25, 0.75], dtype=torch.float64)},
}
STATE = ClientState(
    objective=FLAT["objective"], algorithm={"personal": FLAT["personal"]}, codec={"uplink": FLAT["codec"]}
)


def _equal(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])


def test_state_round_trips_bit_for_bit_with_its_rounds_and_checksum(tmp_path):
    store = NodeStateStore(tmp_path, 1, "k")
    assert store.load() is None
    checksum = store.save(STATE, 4)
    back = store.load()
    assert back is not None and back.rounds == 4 and back.checksum == checksum
    _equal(back.state.to_tree(), STATE.to_tree())


def test_a_file_of_the_flat_format_1_is_read_as_the_typed_state(tmp_path):
    store = NodeStateStore(tmp_path, 1, "k")
    store.path.parent.mkdir(parents=True)
    meta = {"format": LEGACY_FORMAT, "partition": "1", "key": "k", "rounds": "3"}
    write_checked(store.path, flatten(FLAT), meta)
    back = store.load()
    assert back is not None and back.rounds == 3
    _equal(back.state.to_tree(), STATE.to_tree())


def test_a_damaged_file_is_moved_aside_and_the_client_starts_afresh_with_a_warning(tmp_path, caplog):
    store = NodeStateStore(tmp_path, 1, "k")
    store.save(STATE, 2)
    data = bytearray(store.path.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in the last tensor's bytes
    store.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert store.load() is None
    assert "client 1: its saved state is damaged" in caplog.text and "SHA-256" in caplog.text
    assert not store.path.exists() and len(list(store.path.parent.glob("*.damaged"))) == 1


def test_another_clients_file_under_this_clients_name_is_refused(tmp_path):
    NodeStateStore(tmp_path, 0, "k").save(STATE, 1)
    mine = NodeStateStore(tmp_path, 1, "k")
    mine.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(NodeStateStore(tmp_path, 0, "k").path, mine.path)  # a node pointed at the wrong file
    with pytest.raises(NodeIdentityError, match="state of client 0.*not of\\s+client 1.*partition-id"):
        mine.load()


def test_the_key_follows_what_the_state_depends_on_and_the_run():
    cfg = config_from_dict(copy.deepcopy(SMALL))
    more_rounds = cfg.model_copy(update={"server": cfg.server.model_copy(update={"rounds": 9})})
    other_seed = cfg.model_copy(update={"seed": 1})
    assert experiment_key(cfg, "run-a") == experiment_key(more_rounds, "run-a")  # a resumed, longer run
    assert experiment_key(cfg, "run-a") != experiment_key(cfg, "run-b")  # a fresh run
    assert experiment_key(cfg, "run-a") != experiment_key(other_seed, "run-a")


def test_the_state_folder_is_the_node_config_then_the_environment_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMTL_FLOWER_STATE", str(tmp_path / "env"))
    assert state_folder({"state-dir": str(tmp_path / "cfg")}, None) == tmp_path / "cfg"
    assert state_folder({}, None) == tmp_path / "env"
    monkeypatch.delenv("FEDMTL_FLOWER_STATE")
    assert state_folder({}, str(tmp_path / "cache")) == tmp_path / "cache" / "state"
