"""Configuration: defaults, overrides, and errors that name the field, the value and what is allowed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedmtl.config import ConfigError, ExperimentConfig, config_from_dict, dump_config, load_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = ExperimentConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["server.rounds=7", "client.optimizer.lr=0.25", "data.partition={name: shards, classes_per_client: 3}"])
    assert cfg.server.rounds == 7
    assert cfg.client.optimizer.lr == 0.25
    assert cfg.data.partition.name == "shards" and cfg.data.partition.classes_per_client == 3


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"server": {"rounds": 0}}, ["server.rounds", "greater than 0", "got 0"]),
        ({"client": {"lerning_rate": 0.1}}, ["client.lerning_rate", "Extra inputs are not permitted"]),
        ({"client": {"batch_size": "big"}}, ["client.batch_size", "'big'"]),
        ({"data": {"partition": {"name": "zipf"}}}, ["data.partition", "'zipf'", "'iid'", "'dirichlet'", "'shards'"]),
        ({"data": {"partition": {"name": "dirichlet", "alpha": -1}}}, ["data.partition.alpha", "greater than 0"]),
        ({"data": {"test_fraction": 1.5}}, ["data.test_fraction", "less than 1"]),
        ({"server": {"fraction": 0.5, "clients_per_round": 3}}, ["server", "either server.clients_per_round"]),
        ({"server": {"clients_per_round": 500}}, ["clients_per_round=500", "1..100"]),
        ({"data": {"source": {"name": "mnist1d", "tasks": ["digit", "colour"]}}}, ["data.source.tasks", "'colour'"]),
        ({"data": {"partition": {"name": "natural"}}}, ["partition 'natural' needs a source with its own clients"]),
    ],
)
def test_errors_name_field_value_and_allowed(data, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["server.rounds"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["server.rounds=3", "server.rounds.x=1"])


def test_override_switching_kind_starts_section_afresh():
    cfg = load_config(None, ["data.partition.name=shards"])
    assert cfg.data.partition.name == "shards" and cfg.data.partition.classes_per_client == 2


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)


def test_config_is_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


def test_sections_of_the_default_kind_need_no_name():
    cfg = config_from_dict({"model": {"trunk": {"hidden": [16]}}, "client": {"optimizer": {"lr": 0.3}}})
    assert cfg.model.name == "hard_sharing" and cfg.model.trunk.hidden == [16]
    assert cfg.client.optimizer.name == "sgd" and cfg.client.optimizer.lr == 0.3


def test_overriding_a_plain_name_field_keeps_its_section():
    cfg = load_config(None, ["output.dir=/tmp/x", "output.name=mine"])
    assert cfg.output.dir == "/tmp/x" and cfg.output.name == "mine"
