"""Configuration sections that select a registered component by ``name`` (see :mod:`fedmtl.registry`).

A section such as ``mtl.balancer`` is validated against the config model registered under the name it
gives, so a component registered from outside fedmtl is configured exactly like a built-in one (YAML,
``--set``), and an unknown name or option is an error that lists the allowed ones: the same errors a
closed discriminated union gives, because the section is validated through one built from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, TypeAdapter
from pydantic_core import core_schema

from fedmtl import registry
from fedmtl.config.base import StrictModel


class ComponentConfig(StrictModel):
    """What every component's config has: the ``name`` it is registered under."""

    name: str


_adapters: dict[str, tuple[int, TypeAdapter[Any]]] = {}


def union_of(kind: str) -> TypeAdapter[Any]:
    """A discriminated union (on ``name``) of every config model registered for ``kind``, rebuilt when the
    registry changes."""
    models = tuple(c.config_model for c in registry.components(kind))
    cached = _adapters.get(kind)
    if cached is not None and cached[0] == registry.version():
        return cached[1]
    if not models:
        raise registry.RegistryError(f"no {kind} is registered")
    members: Any = Union.__getitem__(models) if len(models) > 1 else models[0]  # the union of what is registered now
    annotated: Any = Annotated.__class_getitem__((members, Field(discriminator="name"))) if len(models) > 1 else members  # type: ignore[attr-defined]
    adapter: TypeAdapter[Any] = TypeAdapter(annotated)
    _adapters[kind] = (registry.version(), adapter)
    return adapter


def models_of(kind: str) -> list[type[BaseModel]]:
    """The config models registered for ``kind``."""
    return [c.config_model for c in registry.components(kind)]


@dataclass(frozen=True)
class Registered:
    """Pydantic metadata: validate the annotated section against the registry's ``kind``."""

    kind: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        kind = self.kind
        return core_schema.no_info_wrap_validator_function(lambda value, _next: union_of(kind).validate_python(value), handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return handler(union_of(self.kind).core_schema)


def registered_kind(metadata: Any) -> str | None:
    """The registry kind that a field's metadata (``FieldInfo.metadata``, or an ``Annotated`` type's) selects, or None."""
    for item in metadata or ():
        if isinstance(item, Registered):
            return item.kind
    return None
