"""Reading configurations: YAML files, ``--set a.b=value`` overrides, readable errors."""

from __future__ import annotations

import difflib
import functools
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.registered import models_of, registered_kind


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each offending field and value."""


#: a configuration file larger than this is refused before it is parsed (the largest shipped one is ~2 KB)
MAX_FILE_BYTES = 1 << 20
#: the most values (mappings, lists and scalars, each alias expanded) a configuration may hold
MAX_NODES = 100_000
#: the deepest nesting of mappings and lists a configuration may hold
MAX_DEPTH = 64
#: an offending value is shown in an error up to this many characters
MAX_SHOWN = 200
#: the most problems one error message lists
MAX_PROBLEMS = 20


def format_validation_error(error: ValidationError, data: Any = None) -> str:
    """One line per problem: ``field.path: message (got value)``, each value shown at most :data:`MAX_SHOWN` long.

    Given the validated ``data``, the path is the one the user wrote (``client.optimizer.lr``), without
    the kind pydantic inserts for a section that chooses one by ``name`` (``client.optimizer.sgd.lr``).
    """
    lines = []
    problems = error.errors()
    for item in problems[:MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in user_path(item["loc"], data))
        got = item.get("input")
        shown = _shorten(repr(got)) if not isinstance(got, dict) else "{...}"
        hint = _did_you_mean(item, _model_of(item["loc"]))
        lines.append(f"  {_shorten(loc) or '<root>'}: {_shorten(item['msg'], 4 * MAX_SHOWN)} (got {shown}){hint}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS} more problems")
    return "invalid configuration:\n" + "\n".join(lines)


def user_path(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """``loc`` without pydantic's validator names and kind tags: an element that is not a key of the section
    it indexes but that section's ``name`` is the tag of a discriminated union."""
    path: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue  # the kind, chosen by the section's own ``name``
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return path


def _model_of(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model whose field the last element of ``loc`` names (None when a union leaves it open)."""
    model: type[BaseModel] | None = ExperimentConfig
    members: list[type[BaseModel]] = []
    for part in loc[:-1]:
        tagged = {_tag(m): m for m in members}
        if isinstance(part, str) and part in tagged:  # pydantic's kind tag picks the union member
            model, members = tagged[part], []
            continue
        if model is None or isinstance(part, int) or part.startswith("function-"):
            continue
        info = model.model_fields.get(part)
        members = _field_models(info) if info is not None else []
        model = members[0] if len(members) == 1 else None
        members = [] if len(members) == 1 else members
    return model


def _tag(model: type[BaseModel]) -> str | None:
    info = model.model_fields.get("name")
    return info.default if info is not None and isinstance(info.default, str) else None


def _did_you_mean(item: Any, model: type[BaseModel] | None) -> str:
    """``; did you mean 'pcgrad'?`` for a misspelt kind, choice or key; else ''."""
    ctx = item.get("ctx") or {}
    if item["type"] == "union_tag_invalid":
        word, choices = str(ctx.get("tag")), re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
    elif item["type"] == "literal_error":
        word, choices = str(item.get("input")), re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
    elif item["type"] == "extra_forbidden" and model is not None:
        word, choices = str(item["loc"][-1]), list(model.model_fields)
    else:
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _shorten(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` of untrusted text, refused (:class:`ConfigError` naming ``what``) when invalid,
    self-referencing, deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_NODES` values once its
    aliases are expanded (a few hundred bytes of nested aliases otherwise expand to millions of values:
    the "billion laughs")."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {_shorten(str(exc), 4 * MAX_SHOWN)}") from exc
    except RecursionError:
        raise ConfigError(f"{what} nests deeper than YAML can read; at most {MAX_DEPTH} levels are allowed") from None
    check_size(value, what)
    return value


def check_size(value: Any, what: str) -> None:
    """Refuse a parsed value that refers to itself, nests deeper than :data:`MAX_DEPTH` or holds more than
    :data:`MAX_NODES` values with every shared (aliased) part counted each time it is used.

    Linear in the number of distinct containers: each one's expanded size is computed once.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{what} nests deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(f"{what} refers to itself (a YAML alias inside its own anchor)")
        open_.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise ConfigError(
                    f"{what} expands to more than {MAX_NODES:,} values (nested YAML aliases?); "
                    f"at most {MAX_NODES:,} are allowed"
                )
        open_.discard(key)
        sizes[key] = total
        return total

    size(value, 0)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value (so ``0.1`` is a float, ``[1,2]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    value = parse_yaml(raw, f"override {_shorten(text)!r}") if raw.strip() else ""
    return path, value


def apply_overrides(
    data: dict[str, Any], overrides: list[str], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` applied; validation later checks keys and types.

    A path into a section the data does not spell out starts from that section's resolved values in
    ``defaults`` (so ``client.optimizer.lr=0.2`` keeps the default optimizer's name); setting a
    section's ``name`` to another value starts that section afresh (its old fields belong to the old kind).
    """
    result = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node, dnode = result, defaults
        for part in path[:-1]:
            child = node.get(part)
            dchild = dnode.get(part) if isinstance(dnode, dict) else None
            if child is None:
                child = _deep_copy(dchild) if isinstance(dchild, dict) else {}
                node[part] = child
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node, dnode = child, dchild
        if (
            path[-1] == "name"
            and ".".join(path[:-1]) in kind_sections()
            and node.get("name") not in (None, value)
        ):
            node.clear()
        node[path[-1]] = value
    return result


@functools.cache
def kind_sections() -> frozenset[str]:
    """Dotted paths of the sections whose ``name`` picks a kind (discriminated unions)."""
    found: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, info in model.model_fields.items():
            path = f"{prefix}{field_name}"
            if info.discriminator is not None or registered_kind(info.metadata) is not None:
                found.add(path)
            for member in _field_models(info):
                walk(member, path + ".")

    walk(ExperimentConfig, "")
    return frozenset(found)


def _field_models(info: FieldInfo) -> list[type[BaseModel]]:
    """The config models a field may hold: its union's members, or every model registered for its kind."""
    kind = registered_kind(info.metadata)
    return models_of(kind) if kind is not None else _models_in(info.annotation)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    kind = registered_kind(getattr(annotation, "__metadata__", ()))
    if kind is not None:
        return models_of(kind)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def fill_default_kinds(data: Any, defaults: Any) -> Any:
    """Give every section that names no ``name`` the default's, so ``model: {trunk: {hidden: [64]}}`` works.

    Sections are discriminated unions on ``name``; a user who only tunes the default kind's fields
    should not have to repeat its name.
    """
    if not isinstance(data, dict) or not isinstance(defaults, dict):
        return data
    out = {k: fill_default_kinds(v, defaults.get(k)) for k, v in data.items()}
    if "name" not in out and isinstance(defaults.get("name"), str):
        out["name"] = defaults["name"]
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a plain dict (plus overrides) into an :class:`ExperimentConfig`."""
    check_size(data, "the configuration")
    defaults: dict[str, Any] | None = None
    if overrides:
        try:
            defaults = ExperimentConfig.model_validate(data).model_dump(mode="json")
        except ValidationError:
            defaults = ExperimentConfig().model_dump(mode="json")
    merged = apply_overrides(data, overrides or [], defaults)
    merged = fill_default_kinds(merged, ExperimentConfig().model_dump(mode="json"))
    check_size(merged, "the configuration with its overrides")
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, merged)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        loaded = parse_yaml(read_text_file(p), f"config file {str(p)!r}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping at the top level, got {type(loaded).__name__}"
            )
        data = loaded
    return config_from_dict(data, overrides)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of a configuration file; a file over :data:`MAX_FILE_BYTES` or not UTF-8 text (a binary
    file, another encoding) is a :class:`ConfigError` naming it."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"config file {str(path)!r} holds {size:,} bytes; at most {MAX_FILE_BYTES:,} are allowed")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}); "
            "a configuration is a YAML text file"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"config file {str(path)!r} is not a text file (it holds NUL bytes); a configuration is a YAML text file")
    return text


def dump_config(config: ExperimentConfig) -> str:
    """The fully resolved configuration as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
