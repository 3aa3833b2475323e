"""A client's typed state: one sub-tree per owner, merged over the prior state as the flat dict was,
stored in checkpoints of format 2; a checkpoint of format 1 (flat client states) resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fedmtl
from fedmtl.checked_file import CHECKSUM_KEY, content_digest
from fedmtl.fl.client_state import ClientState
from fedmtl.runloop.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from fedmtl.tree import flatten, unflatten, unshared


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


#: a format-1 (flat) client state with every owner's keys, and the typed state it is
FLAT = {
    "objective": {"scheme": {"prev": t(1.0, 2.0)}, "balancer": {}},
    "local": {"trunk.local.w": t(3.0)},
    "buffers": {"bn.running_mean": t(0.5)},
    "dp_sgd_history": t(1.0, 0.1, 4.0),
    "codec": {"residual": {"w": t(0.25)}},
    "codec_outbox": {"residual": {"delta_c": {"w": t(0.125)}}},
    "downlink_copy": {"w": t(9.0)},
    "personal": {"heads.a.w": t(4.0)},
    "scaffold_c": {"w": t(5.0)},
    "apfl_alpha": t(0.5),
}
TYPED = ClientState(
    objective=FLAT["objective"],
    local=FLAT["local"],
    buffers=FLAT["buffers"],
    privacy={"dp_sgd_history": FLAT["dp_sgd_history"]},
    algorithm={"personal": FLAT["personal"], "scaffold_c": FLAT["scaffold_c"], "apfl_alpha": FLAT["apfl_alpha"]},
    codec={"uplink": FLAT["codec"], "outbox": FLAT["codec_outbox"], "downlink_copy": FLAT["downlink_copy"]},
)

#: typed slot (and part) -> the flat key of format 1: the inverse of ClientState.from_legacy, for writing old files
_FLAT_KEYS = {("privacy", "dp_sgd_history"): "dp_sgd_history", ("codec", "uplink"): "codec", ("codec", "outbox"): "codec_outbox", ("codec", "downlink_copy"): "downlink_copy"}


def to_flat(state: ClientState) -> dict[str, object]:
    """The client state as fedmtl stored it before format 2 (every owner's keys side by side)."""
    flat: dict[str, object] = {s: getattr(state, s) for s in ("objective", "local", "buffers") if getattr(state, s)}
    for slot in ("privacy", "codec"):
        for part, value in getattr(state, slot).items():
            flat[_FLAT_KEYS[(slot, part)]] = value
    return {**flat, **state.algorithm}


def same(a: object, b: object) -> bool:
    fa, fb = flatten(a), flatten(b)  # type: ignore[arg-type]
    return fa.keys() == fb.keys() and all(fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa)


def test_the_flat_layout_of_format_1_maps_every_key_to_its_owner() -> None:
    assert same(ClientState.from_legacy(FLAT).to_tree(), TYPED.to_tree())
    assert same(to_flat(TYPED), FLAT)  # the test's writer of old files is the inverse


def test_the_tree_round_trips_and_leaves_out_empty_slots_and_the_server_view() -> None:
    assert same(ClientState.from_tree(TYPED.to_tree()).to_tree(), TYPED.to_tree())
    viewed = ClientState(algorithm={"x": t(1.0)}, server={"c": {"w": t(2.0)}})
    assert same(viewed.to_tree(), {"algorithm": {"x": t(1.0)}}) and viewed.without_server().server == {}
    assert ClientState().to_tree() == {}


def test_an_unknown_part_or_a_tensor_where_a_slot_belongs_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"unknown parts \['personal'\].*expected some of"):
        ClientState.from_tree({"personal": {"w": t(1.0)}})
    with pytest.raises(ValueError, match="part 'objective' is a Tensor"):
        ClientState.from_tree({"objective": t(1.0)})
    with pytest.raises(ValueError, match="entry 'local' is a Tensor"):
        ClientState.from_legacy({"local": t(1.0)})


def test_what_training_returns_is_laid_over_the_prior_as_the_flat_dict_was() -> None:
    prior = ClientState(
        objective={"scheme": {"prev": t(1.0)}},
        local={"l": t(1.0)},
        privacy={"dp_sgd_history": t(1.0)},
        algorithm={"personal": {"w": t(1.0)}, "scaffold_c": {"w": t(1.0)}},
        codec={"uplink": {"residual": {"w": t(1.0)}}},
        server={"c": {"w": t(7.0)}},
    )
    returned = ClientState(objective={"balancer": {"ema": t(2.0)}}, algorithm={"personal": {"w": t(2.0)}}, server={"c": {}})
    nxt = returned.over(prior)
    # the objective is replaced whole (as the flat "objective" key was), the local parameters kept
    assert same(nxt.objective, {"balancer": {"ema": t(2.0)}}) and same(nxt.local, prior.local)
    # the algorithm's slot key by key: what it returned, and what it did not return carries over
    assert same(nxt.algorithm, {"personal": {"w": t(2.0)}, "scaffold_c": {"w": t(1.0)}})
    assert same(nxt.privacy, prior.privacy) and same(nxt.codec, prior.codec)  # the node writes the codec slot
    assert nxt.server == {}
    # and it is the flat merge of format 1, key for key
    flat = {**to_flat(prior), **to_flat(returned)}
    assert same(nxt.to_tree(), ClientState.from_legacy(flat).to_tree())


def stateful(tmp_path, rounds: int, name: str) -> dict:  # type: ignore[no-untyped-def]
    """A run in which every owner keeps state: SCAFFOLD (algorithm and outbox), DWA (objective), top-k with
    error feedback (codec residuals, the outbox's too), differences on the downlink (the client's copy)."""
    return {
        "seed": 0,
        "data": {"source": {"name": "mnist1d", "num_samples": 400, "tasks": ["digit", "parity"]}, "num_clients": 4},
        "model": {"name": "hard_sharing", "trunk": {"name": "mlp", "hidden": [16]}},
        "client": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
        "server": {"rounds": rounds, "clients_per_round": 4},
        "algorithm": {"name": "scaffold"},
        "mtl": {"balancer": {"name": "dwa"}},
        "comm": {"uplink": [{"name": "topk", "fraction": 0.2, "error_feedback": True}], "downlink_delta": [{"name": "identity"}]},
        "output": {"dir": str(tmp_path), "name": name, "plots": False},
    }


def rewrite_as_format_1(path) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a checkpoint as fedmtl wrote it before format 2: flat client states, format "1", its checksum."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
    tree = unflatten(load_file(str(path)))
    tree["clients"] = {c: to_flat(ClientState.from_tree(s)) for c, s in tree["clients"].items()}
    flat = unshared(flatten(tree))
    metadata = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY} | {"format": "1"}
    metadata[CHECKSUM_KEY] = content_digest(flat, metadata)
    save_file(flat, str(path), metadata=metadata)


def test_a_run_checkpointed_in_format_1_resumes_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    full = fedmtl.Experiment(stateful(tmp_path, 3, "full")).run(progress=False)
    first = fedmtl.Experiment(stateful(tmp_path, 2, "part")).run(progress=False)
    newest = list_checkpoints(first.run_dir)[0]
    before, _ = read_checkpoint(newest)
    owners = {s for cs in before.client_states.values() for s, v in cs.to_tree().items() if v}
    assert {"objective", "algorithm", "codec"} <= owners  # the run does exercise the typed state
    assert {"uplink", "outbox", "downlink_copy"} <= {p for cs in before.client_states.values() for p in cs.codec}
    rewrite_as_format_1(newest)
    with safe_open(str(newest), framework="pt") as fh:
        assert fh.metadata()["format"] == "1"
    converted, _ = read_checkpoint(newest)
    for cid, cs in before.client_states.items():
        assert same(converted.client_states[cid].to_tree(), cs.to_tree()), cid
    resumed = fedmtl.Experiment(stateful(tmp_path, 3, "part")).run(resume=first.run_dir, progress=False)
    for name, value in full.params.items():
        assert torch.equal(value, resumed.params[name]), name


def test_a_checkpoint_of_an_unknown_format_is_refused_naming_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flat = {"params/w": torch.ones(2)}
    metadata = {"format": "7", "round": "1", "meta": json.dumps({})}
    metadata[CHECKSUM_KEY] = content_digest(flat, metadata)
    path = tmp_path / "round-000001.safetensors"
    save_file(flat, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"format '7', expected one of \['1', '2'\]"):
        read_checkpoint(path)
