"""One registration pattern (issue 16): components registered from outside fedmtl, by ``fedmtl.register`` or
the ``fedmtl.plugins`` entry-point group, are selected by name in YAML and ``--set`` and listed by
``fedmtl list``; bad registrations and unknown names are errors that name what is allowed."""

from __future__ import annotations

import textwrap
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

import fedmtl
from fedmtl.cli import app
from fedmtl.config import ConfigError, config_from_dict, load_config
from fedmtl.mtl.balancers import EqualWeighting
from fedmtl.mtl.factory import build_balancer
from fedmtl.registry import PluginError, RegistryError


class HalfConfig(BaseModel):
    """Every task at weight ``w`` (a test balancer)."""

    name: Literal["half"] = "half"
    w: float = Field(default=0.5, gt=0)


def _half(cfg, tasks):
    from fedmtl.mtl.balancers import StaticWeighting

    return StaticWeighting([cfg.w] * len(tasks))


def test_every_kind_has_its_builtins_and_each_builds_from_its_defaults(clean_registry):
    counts = {kind: len(clean_registry.names(kind)) for kind in clean_registry.KINDS}
    assert counts["balancer"] >= 27 and counts["codec"] >= 14 and counts["algorithm"] >= 13 and counts["model"] >= 13
    assert counts["aggregator"] >= 5 and counts["server_optimizer"] >= 5 and counts["scheme"] >= 3 and counts["trunk"] >= 3
    for c in clean_registry.components():
        assert c.description and not c.description.endswith(","), (c.kind, c.name)
        assert c.config_model.model_fields["name"].default == c.name


def test_a_registered_balancer_is_selected_by_name_in_yaml_and_set(clean_registry, tmp_path):
    fedmtl.register("balancer", "half", _half, HalfConfig, loss_only=True)
    path = tmp_path / "c.yaml"
    path.write_text("mtl:\n  balancer: {name: half, w: 0.25}\n")
    cfg = load_config(path)
    assert isinstance(cfg.mtl.balancer, HalfConfig) and cfg.mtl.balancer.w == 0.25
    assert load_config(None, ["mtl.balancer.name=half", "mtl.balancer.w=2"]).mtl.balancer.w == 2.0
    assert build_balancer(cfg.mtl.balancer, ["a", "b"]).weights.tolist() == [0.25, 0.25]
    # its options are validated like a built-in's, the error naming the field
    with pytest.raises(ConfigError, match=r"mtl.balancer.w: Input should be greater than 0"):
        config_from_dict({"mtl": {"balancer": {"name": "half", "w": -1}}})
    with pytest.raises(ConfigError, match=r"mtl.balancer.v: Extra inputs are not permitted"):
        config_from_dict({"mtl": {"balancer": {"name": "half", "v": 1}}})
    # loss_only: DP-SGD accepts it, as it accepts the built-in loss weightings
    dp = config_from_dict({"mtl": {"balancer": {"name": "half"}}, "privacy": {"dp_sgd": {"noise_multiplier": 1.0}}})
    assert dp.mtl.balancer.name == "half"
    # the resolved config dumps its options and reads back
    from fedmtl.config import dump_config

    assert "name: half" in dump_config(cfg) and "w: 0.25" in dump_config(cfg)


def test_an_unknown_name_lists_the_registered_ones_including_plugins(clean_registry):
    fedmtl.register("balancer", "half", _half, HalfConfig)
    with pytest.raises(ConfigError, match=r"does not match any of the expected tags: .*'half'.*; did you mean 'half'\?"):
        config_from_dict({"mtl": {"balancer": {"name": "hallf"}}})
    with pytest.raises(RegistryError, match=r"unknown balancer 'nope'; allowed: .*half.*pcgrad"):
        clean_registry.get("balancer", "nope")
    with pytest.raises(RegistryError, match=r"unknown component kind 'balancers'; allowed: model, trunk, balancer"):
        clean_registry.get("balancers", "pcgrad")


def test_bad_registrations_are_refused_with_the_reason(clean_registry):
    with pytest.raises(RegistryError, match="already registered"):
        fedmtl.register("balancer", "pcgrad", _half)
    with pytest.raises(RegistryError, match=r"must declare `name: Literal\['other'\] = 'other'`"):
        fedmtl.register("balancer", "other", _half, HalfConfig)
    with pytest.raises(RegistryError, match="must match"):
        fedmtl.register("balancer", "Bad Name", _half)
    with pytest.raises(RegistryError, match="factory must be callable"):
        fedmtl.register("balancer", "x", 3)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match=r"codec 'c' must declare stage"):
        fedmtl.register("codec", "c", lambda cfg: None)
    with pytest.raises(RegistryError, match=r"unknown trait 'stage'; a balancer takes: loss_only, per_parameter_state"):
        fedmtl.register("balancer", "y", _half, stage="byte")
    with pytest.raises(RegistryError, match="allowed: 'sparsifier', 'quantiser', 'byte'"):
        fedmtl.register("codec", "c", lambda cfg: None, stage="middle")
    # replace=True replaces; a component without options gets a config model of its own
    c = fedmtl.register("balancer", "pcgrad", lambda cfg, tasks: EqualWeighting(), replace=True)
    assert c.options() == {} and c.config_model().name == "pcgrad"


def _write_plugin(root, module: str, body: str, attr: str = "") -> None:
    """An installed distribution (a dist-info folder on sys.path) whose ``fedmtl.plugins`` entry point is ``module[:attr]``."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fedmtl.plugins]\ntestplug = {module}{':' + attr if attr else ''}\n")


PLUGIN = """
    from typing import Literal
    from pydantic import BaseModel
    import fedmtl

    class Cfg(BaseModel):
        '''Every task at weight 3 (from a plugin).'''
        name: Literal["triple"] = "triple"

    def setup():
        from fedmtl.mtl.balancers import StaticWeighting
        fedmtl.register("balancer", "triple", lambda cfg, tasks: StaticWeighting([3.0] * len(tasks)), Cfg, loss_only=True)
"""


def test_an_entry_point_plugin_is_loaded_lazily_selected_and_listed(clean_registry, tmp_path, monkeypatch):
    _write_plugin(tmp_path, "fedmtl_test_plugin", PLUGIN, "setup")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(clean_registry, "_plugins_loaded", False)
    cfg = config_from_dict({"mtl": {"balancer": {"name": "triple"}}})
    assert build_balancer(cfg.mtl.balancer, ["a"]).weights.tolist() == [3.0]
    out = CliRunner().invoke(app, ["list", "balancer"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("triple"))
    assert "Every task at weight 3 (from a plugin)." in line and "[fedmtl_test_plugin]" in line


def test_a_broken_plugin_is_an_error_naming_it(clean_registry, tmp_path, monkeypatch):
    _write_plugin(tmp_path, "fedmtl_broken_plugin", "raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(clean_registry, "_plugins_loaded", False)
    with pytest.raises(PluginError, match=r"fedmtl plugin 'testplug' \(fedmtl_broken_plugin, entry-point group 'fedmtl.plugins'\) failed to load: RuntimeError: no GPU here"):
        clean_registry.names("balancer")
    monkeypatch.setattr(clean_registry, "_plugins_loaded", False)
    out = CliRunner().invoke(app, ["list"])
    assert out.exit_code == 2 and "testplug" in out.output


def test_list_shows_every_kind_with_descriptions_and_options():
    out = CliRunner().invoke(app, ["list"])
    assert out.exit_code == 0, out.output
    text = out.stdout
    for heading in ("model (model)", "balancer (mtl.balancer)", "codec (comm.uplink", "algorithm (algorithm)", "aggregator (server.aggregator)", "server_optimizer (server.optimizer)", "scheme (mtl.scheme)", "trunk (model.trunk)"):
        assert heading in text, heading
    assert "cagrad       Conflict-averse gradient descent (Liu et al., 2021)." in text
    assert "options: c: float = 0.4" in text
    assert "options: bits: 2 | 4 | 8 = 4, block_size: int = 64" in text
    one = CliRunner().invoke(app, ["list", "codec"])
    assert one.exit_code == 0 and "balancer" not in one.stdout and "topk" in one.stdout
    bad = CliRunner().invoke(app, ["list", "balancers"])
    assert bad.exit_code == 2 and "allowed: model, trunk, balancer" in bad.output


def test_the_json_schema_lists_every_registered_kind():
    schema = fedmtl.ExperimentConfig.model_json_schema()
    mapping = schema["$defs"]["MTLConfig"]["properties"]["balancer"]["discriminator"]["mapping"]
    assert {"pcgrad", "cagrad", "equal"} <= set(mapping)


def test_a_description_is_the_first_sentence_not_cut_at_an_abbreviation():
    from fedmtl.registry import first_sentence

    assert first_sentence("Blocks: unbiased (e.g. 4-bit, blocks of 64). More here.") == "Blocks: unbiased (e.g. 4-bit, blocks of 64)."
    assert first_sentence("Momentum (Lin et al. 2018) and masking. Then.") == "Momentum (Lin et al. 2018) and masking."
    assert first_sentence("One line\nwrapped.\n\nSecond paragraph.") == "One line wrapped."
