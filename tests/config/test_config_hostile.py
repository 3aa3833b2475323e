"""Careless and hostile configurations: every number is finite and bounded, YAML is bounded, preconditions
are checked before training; whatever the input, the outcome is a config or a ConfigError naming the field."""

from __future__ import annotations

import collections
import math
import random
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import fedmtl
from fedmtl.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from fedmtl.config.base import MAX_SEED, MAX_SIZE, StrictModel
from fedmtl.config.loading import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from fedmtl.config.registered import models_of, registered_kind


def _members(annotation: Any, metadata: Any = ()) -> list[Any]:
    kind = registered_kind(metadata) or registered_kind(getattr(annotation, "__metadata__", ()))
    if kind is not None:  # a section that selects a registered component: every registered kind's model
        return models_of(kind)
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, type(int | None)) or (args and typing.get_origin(annotation) is None):
        return [m for a in args for m in _members(a)]
    return [annotation]


Step = tuple[str, "str | None"]  # a section's field name and the kind (``name``) chosen for it


def numeric_fields(model: type[BaseModel] = ExperimentConfig, path: tuple[Step, ...] = ()) -> Iterator[tuple[tuple[Step, ...], str, type]]:
    """``(section path with each section's kind, field, int | float)`` for every numeric field of every section kind."""
    for field, info in model.model_fields.items():
        for member in _members(info.annotation, info.metadata):
            if isinstance(member, type) and issubclass(member, BaseModel):
                kind = member.model_fields["name"].default if "name" in member.model_fields else None
                yield from numeric_fields(member, (*path, (field, kind)))
            elif member in (int, float):
                yield path, field, member


FIELDS = sorted(set(numeric_fields()), key=str)


def with_value(path: tuple[Step, ...], name: str, value: Any) -> dict[str, Any]:
    section: dict[str, Any] = {name: value}
    for field, kind in reversed(path):
        section = {field: section} if kind is None else {field: {**section, "name": kind}}
    return section


def test_the_walk_finds_the_numeric_fields():
    names = {(".".join(f for f, _ in p), n) for p, n, _ in FIELDS}
    assert ("", "seed") in names and ("client", "batch_size") in names and ("privacy.dp", "noise_multiplier") in names
    assert ("privacy.secure_aggregation", "threshold") in names and ("comm", "max_payload_mb") in names
    assert len(FIELDS) > 100


def test_every_section_refuses_inf_and_nan():
    def models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
        yield model
        for info in model.model_fields.values():
            for member in _members(info.annotation):
                if isinstance(member, type) and issubclass(member, BaseModel):
                    yield from models(member)

    assert all(issubclass(m, StrictModel) and m.model_config.get("allow_inf_nan") is False for m in models(ExperimentConfig))


def test_every_int_field_is_bounded_above():
    for path, name, typ in FIELDS:
        if typ is int:
            with pytest.raises(ConfigError, match=name):
                config_from_dict(with_value(path, name, 2**70))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_numeric_field_refuses_non_finite_values_naming_it(value):
    for path, name, _ in FIELDS:
        with pytest.raises(ConfigError) as info:
            config_from_dict(with_value(path, name, value))
        assert f"{name}:" in str(info.value), (path, name, str(info.value))


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"privacy": {"dp": {"noise_multiplier": math.inf}}}, ["privacy.dp.noise_multiplier", "finite number"]),
        ({"client": {"optimizer": {"lr": math.inf}}}, ["client.optimizer.lr", "finite number"]),
        ({"privacy": {"dp": {"noise_multiplier": 1.0, "clip_norm": math.inf}}}, ["privacy.dp.clip_norm", "finite number"]),
        ({"privacy": {"secure_aggregation": {"clip_range": math.inf}}}, ["clip_range", "finite number"]),
        ({"privacy": {"secure_aggregation": {"threshold": math.inf}}}, ["secure_aggregation.threshold", "finite number"]),
        ({"comm": {"max_payload_mb": math.inf}}, ["comm.max_payload_mb", "finite number"]),
        ({"seed": 2**70}, ["seed", f"less than or equal to {MAX_SEED}"]),
        ({"client": {"batch_size": 10**12}}, ["client.batch_size", f"less than or equal to {MAX_SIZE}"]),
        ({"model": {"trunk": {"hidden": [10**9]}}}, ["model.trunk.hidden.0", "less than or equal to 65536"]),
        ({"privacy": {"secure_aggregation": {"min_group_survivors": 1}}}, ["min_group_survivors", "greater than or equal to 2"]),
        ({"model": {"trunk": {"hidden": [8] * 65}}}, ["model.trunk.hidden", "at most 64 items"]),
    ],
)
def test_careless_values_are_refused_naming_field_and_bound(data, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "override, path",
    [
        ("client.optimizer.lr=.inf", "client.optimizer.lr: "),
        ("comm.uplink=[{name: topk, fraction: .nan}]", "comm.uplink.0.fraction: "),
        ("engine={name: distributed, local: {name: sequential, extra: 1}}", "engine.local.extra: "),
        ("mtl.balancer={name: static, weights: {digit: .inf}}", "mtl.balancer.weights.digit: "),
    ],
)
def test_errors_name_the_key_path_the_user_wrote_without_the_kind(override, path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert f"\n  {path}" in str(info.value), str(info.value)


def test_scaffold_needs_plain_sgd_at_config_time():
    with pytest.raises(ConfigError, match="scaffold' needs client.optimizer sgd with momentum 0, got sgd with momentum 0.5"):
        config_from_dict({"algorithm": {"name": "scaffold"}, "client": {"optimizer": {"momentum": 0.5}}})
    with pytest.raises(ConfigError, match="got adam"):
        config_from_dict({"algorithm": {"name": "scaffold"}, "client": {"optimizer": {"name": "adam"}}})
    assert config_from_dict({"algorithm": {"name": "scaffold"}}).client.optimizer.momentum == 0


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "krum", "norm_bounded"])
@pytest.mark.parametrize("privacy", [{"dp": {"noise_multiplier": 1.0}}, {"secure_aggregation": {}}], ids=["dp", "secure_aggregation"])
def test_robust_aggregators_are_refused_with_private_aggregation(aggregator, privacy):
    with pytest.raises(ConfigError, match=f"server.aggregator '{aggregator}' cannot be combined with privacy.{next(iter(privacy))}"):
        config_from_dict({"server": {"aggregator": {"name": aggregator}}, "privacy": privacy})
    assert config_from_dict({"privacy": privacy}).server.aggregator.name == "mean"


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, 1e308, 5e-324, True]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=NUMBERS)
def test_fuzzed_numeric_values_end_in_a_usable_config_or_an_error_naming_the_field(field, value):
    path, name, typ = field
    unusable = (isinstance(value, float) and not math.isfinite(value)) or (
        typ is int and not isinstance(value, bool) and isinstance(value, int) and value > MAX_SEED
    )
    try:
        cfg = config_from_dict(with_value(path, name, value))
    except ConfigError as exc:
        assert not unusable or f"{name}:" in str(exc), str(exc)
        return
    assert not unusable
    assert_usable(cfg.model_dump())


def assert_usable(tree: Any) -> None:
    """Every number of an accepted config is finite and within what the generators and memory take."""
    if isinstance(tree, dict):
        for v in tree.values():
            assert_usable(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            assert_usable(v)
    elif isinstance(tree, float):
        assert math.isfinite(tree)
    elif isinstance(tree, int):
        assert -1 < tree <= MAX_SEED or isinstance(tree, bool)


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["name", "lr", "seed", "x", "rounds"]), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.sampled_from(sorted(ExperimentConfig.model_fields)), value=YAML_VALUES)
def test_fuzzed_sections_end_in_a_config_or_a_config_error(section, value):
    try:
        assert_usable(config_from_dict({section: value}).model_dump())
    except ConfigError:
        pass


def alias_bomb(levels: int = 6, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ",".join(["1"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nseed: *a{levels}\n"


def test_a_yaml_alias_bomb_is_refused_quickly_and_not_printed(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())  # ~340 bytes that expand to 10**6 leaves
    assert path.stat().st_size < 400
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_NODES:,} values") as info:
        load_config(path)
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(None, ["seed=" + alias_bomb().replace("\n", ", ").join(["{", "}"]).replace(", }", "}")])


def test_an_alias_bomb_that_fits_the_bound_is_not_printed_whole(tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text(alias_bomb(levels=3))  # 10**4 leaves: allowed, then refused as a seed
    with pytest.raises(ConfigError, match=r"seed: Input should be a valid integer") as info:
        load_config(path)
    assert len(str(info.value)) < 2_000 and "(32220 characters)" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a: &a [*a]\n", "refers to itself"),
        (b"x: " + b"[" * 100 + b"]" * 100, f"nests deeper than {MAX_DEPTH} levels"),
        (b"x: " + b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", r"is not UTF-8 text \(byte 0"),
        ("seed: 1 # caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
        (b"seed: 1\x00\n", "not a text file"),
        (b"seed: [1, 2\n", "not valid YAML"),
        (b"x" * (MAX_FILE_BYTES + 1), f"at most {MAX_FILE_BYTES:,} are allowed"),
    ],
    ids=["self-reference", "deep", "very-deep", "png", "latin-1", "nul", "bad-yaml", "huge"],
)
def test_damaged_or_hostile_config_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_an_ordinary_config_is_well_within_the_yaml_bounds(tmp_path):
    from fedmtl.config import dump_config

    text = dump_config(ExperimentConfig())
    assert len(text) < MAX_FILE_BYTES // 100
    assert yaml.safe_load(text) == ExperimentConfig().model_dump(mode="json")


def test_the_config_knows_which_balancers_need_gradients_as_the_balancers_say():
    from fedmtl import registry
    from fedmtl.config.mtl import loss_balancers, parameter_gradient_balancers
    from fedmtl.mtl.factory import build_balancer

    built = {}
    for component in registry.components("balancer"):
        cls = component.config_model
        cfg = cls(weights={"a": 1.0}) if component.name == "static" else cls()
        built[cfg.name] = build_balancer(cfg, ["a", "b"])
    assert len(built) >= 27
    assert loss_balancers() == {n for n, b in built.items() if b.requires == "losses"}
    assert parameter_gradient_balancers() == {n for n, b in built.items() if not getattr(b, "representation_ok", True)}


def test_balancer_preconditions_at_config_time():
    with pytest.raises(ConfigError, match="privacy.dp_sgd needs a balancer that only weights losses; mtl.balancer 'pcgrad'"):
        config_from_dict({"mtl": {"balancer": {"name": "pcgrad"}}, "privacy": {"dp_sgd": {"noise_multiplier": 1.0}}})
    with pytest.raises(ConfigError, match="'db_mtl' keeps state per parameter and needs mtl.gradients.source 'parameters'"):
        config_from_dict({"mtl": {"balancer": {"name": "db_mtl"}, "gradients": {"source": "representation"}}})
    config_from_dict({"mtl": {"balancer": {"name": "famo"}}, "privacy": {"dp_sgd": {"noise_multiplier": 1.0}}})


HOSTILE = [math.inf, -math.inf, math.nan, 2**70, 10**12, 2**32, 2**63, -1, 0, 1, 1e308, 5e-324, 0.5, True, "x", None, [1], {}]


def fuzz_configs(n: int, seed: int = 17) -> collections.Counter[str]:
    """``n`` random configs, 1-3 numeric fields (one per top-level section) set to a hostile or random value;
    how each ended. The figures in docs/reliability.md come from ``fuzz_configs(2000)``."""
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        data: dict[str, Any] = {}
        picks = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            path, name, typ = rng.choice(FIELDS)
            top = path[0][0] if path else name
            if top in data:
                continue
            value = rng.choice(HOSTILE) if rng.random() < 0.7 else rng.choice([rng.uniform(-1e3, 1e3), rng.randint(-(2**40), 2**40)])
            data.update(with_value(path, name, value))
            picks.append((name, typ, value))
        unusable = [
            name for name, typ, v in picks
            if (isinstance(v, float) and not math.isfinite(v)) or (typ is int and type(v) is int and v > MAX_SEED)
        ]
        try:
            assert_usable(config_from_dict(data).model_dump())
            outcomes["accepted an unusable value" if unusable else "accepted"] += 1
        except ConfigError as exc:
            named = not unusable or any(f"{name}:" in str(exc) for name in unusable)
            outcomes["ConfigError naming the field" if named else "ConfigError not naming the field"] += 1
        except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
            outcomes[f"other: {type(exc).__name__}"] += 1
    return outcomes


def test_random_configs_end_in_a_usable_config_or_an_error_naming_the_field():
    outcomes = fuzz_configs(2000)
    assert set(outcomes) <= {"accepted", "ConfigError naming the field"}, outcomes
    assert outcomes["accepted"] > 100 and outcomes["ConfigError naming the field"] > 1000


def fuzz_files(tmp_path: Any, n: int, seed: int = 17) -> collections.Counter[str]:
    """``n`` config files, half random bytes, half the shipped demo.yaml with 1-8 bytes replaced; how each ended."""
    demo = (Path(fedmtl.__file__).parent / "configs" / "demo.yaml").read_bytes()
    rng = random.Random(seed)
    path = tmp_path / "fuzzed.yaml"
    outcomes: collections.Counter[str] = collections.Counter()
    for i in range(n):
        raw = bytearray(demo) if i % 2 else bytearray(rng.randbytes(rng.randint(0, 400)))
        for _ in range(rng.randint(1, 8) if i % 2 else 0):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        try:
            load_config(path)
            outcomes["accepted"] += 1
        except ConfigError as exc:
            message = str(exc)
            kind = "not UTF-8 text" if "UTF-8" in message or "text file" in message else "invalid YAML" if "YAML" in message else "not a mapping" if "mapping" in message else "invalid values"
            outcomes[f"ConfigError: {kind}"] += 1
        except Exception as exc:  # noqa: BLE001
            outcomes[f"other: {type(exc).__name__}"] += 1
    return outcomes


def test_random_and_mutated_config_files_end_in_a_config_or_a_config_error(tmp_path):
    outcomes = fuzz_files(tmp_path, 300)
    assert not [k for k in outcomes if k.startswith("other")], outcomes
