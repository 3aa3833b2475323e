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

from fedmtl.config.experiment import ExperimentConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each offending field and value."""


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``, plus a "did you mean" for a near miss.

    The path is the user's own keys (``client.optimizer.lr``): pydantic's location also holds the tag
    of each discriminated section it entered (``client.optimizer.sgd.lr``), which is dropped.
    """
    lines = []
    for item in error.errors():
        loc, model = _user_path(item["loc"])
        got = item.get("input")
        shown = repr(got) if not isinstance(got, dict) else "{...}"
        hint = _did_you_mean(item, model)
        lines.append(f"  {'.'.join(loc) or '<root>'}: {item['msg']} (got {shown}){hint}")
    return "invalid configuration:\n" + "\n".join(lines)


def _user_path(loc: tuple[int | str, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """The location without union tags and validator names, and the model holding its last key."""
    path: list[str] = []
    model: type[BaseModel] | None = ExperimentConfig
    members: list[type[BaseModel]] = []
    for i, part in enumerate(loc):
        text = str(part)
        if text.startswith("function-"):
            continue
        tagged = {_tag(m): m for m in members}
        if isinstance(part, str) and part in tagged:
            model, members = tagged[part], []
            continue
        path.append(text)
        if i == len(loc) - 1 or model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(text)
        members = _models_in(info.annotation) if info is not None else []
        model = members[0] if len(members) == 1 else None
        if len(members) == 1:
            members = []
    return path, model


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value (so ``0.1`` is a float, ``[1,2]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
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
            if info.discriminator is not None:
                found.add(path)
            for member in _models_in(info.annotation):
                walk(member, path + ".")

    walk(ExperimentConfig, "")
    return frozenset(found)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
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
    defaults: dict[str, Any] | None = None
    if overrides:
        try:
            defaults = ExperimentConfig.model_validate(data).model_dump(mode="json")
        except ValidationError:
            defaults = ExperimentConfig().model_dump(mode="json")
    merged = apply_overrides(data, overrides or [], defaults)
    merged = fill_default_kinds(merged, ExperimentConfig().model_dump(mode="json"))
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping at the top level, got {type(loaded).__name__}"
            )
        data = loaded
    return config_from_dict(data, overrides)


def dump_config(config: ExperimentConfig) -> str:
    """The fully resolved configuration as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
