"""One registry of named components: balancers, schemes, models, trunks, codecs, aggregators, server
optimisers and algorithms.

Every component registers itself beside its code with :func:`register` (kind, name, factory, config
model, one-line description); the configuration selects it by ``name`` (YAML and ``--set``), validated
against the config model registered under that name, and the experiment builds it with the factory.
Users add their own the same way from outside the package, or through the entry-point group
``fedmtl.plugins`` (each entry point names a module, imported, or a callable, called with no
arguments; both register their components). ``fedmtl list [KIND]`` lists everything registered.

The registry itself imports only pydantic: built-in components of a kind are imported the first time
that kind is looked up, and plugins the first time any kind is, so ``import fedmtl`` stays light.

What each kind's factory is called with (``cfg`` is the validated config model instance):

=================== ================================================== ==========================
kind                factory(...)                                       returns
=================== ================================================== ==========================
``balancer``        ``factory(cfg, tasks: Sequence[str])``             a ``fedmtl.mtl.balancers.Balancer``
``scheme``          ``factory(cfg, tasks: Sequence[str])``             a ``fedmtl.mtl.schemes.Scheme``
``model``           ``factory(cfg, input_shape, tasks: Sequence[Task])`` a ``MultiTaskModel`` (or an ``nn.Module``)
``trunk``           ``factory(cfg, input_shape)``                      ``(nn.Module, output width)``
``codec``           ``factory(cfg)``                                   a sparsifier, quantiser or byte codec
``aggregator``      ``factory(cfg)``                                   ``(updates [N, P], weights [N]) -> [P]``
``server_optimizer`` ``factory(cfg)``                                  a ``TransformOptimizer``
``algorithm``       ``factory(cfg, make_model)``                       a ``fedmtl.fl.algorithm.Algorithm``
=================== ================================================== ==========================
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, create_model

__all__ = [
    "KINDS",
    "PLUGIN_GROUP",
    "Component",
    "Kind",
    "PluginError",
    "RegistryError",
    "build",
    "components",
    "get",
    "names",
    "options",
    "register",
    "unregister",
]

#: the entry-point group whose entries register plugins' components
PLUGIN_GROUP = "fedmtl.plugins"


class RegistryError(ValueError):
    """A bad registration or a lookup of a name nobody registered; the message names what is allowed."""


class PluginError(ImportError):
    """An entry point of ``fedmtl.plugins`` failed to load; the message names it and why."""


@dataclass(frozen=True)
class Kind:
    """A kind of component: where it is configured, which modules register the built-ins, and the
    traits a registration of it may (``traits``) or must (``required``) declare, with their allowed values."""

    section: str
    summary: str
    modules: tuple[str, ...]
    traits: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()


#: the kinds of component, in the order ``fedmtl list`` shows them
KINDS: Mapping[str, Kind] = MappingProxyType({
    "model": Kind("model", "multi-task architectures", ("fedmtl.mtl.models", "fedmtl.mtl.factory")),
    "trunk": Kind("model.trunk", "shared feature extractors of the trunk-based models", ("fedmtl.mtl.models.trunks",)),
    "balancer": Kind(
        "mtl.balancer", "loss weighting and gradient balancing", ("fedmtl.mtl.balancers",),
        # loss_only: weights the losses, needs no per-task gradients (DP-SGD accepts it);
        # per_parameter_state: keeps state per parameter, so needs gradients on the parameters
        traits={"loss_only": (True, False), "per_parameter_state": (True, False)},
    ),
    "scheme": Kind("mtl.scheme", "joint-optimisation schemes", ("fedmtl.mtl.schemes",)),
    "algorithm": Kind("algorithm", "federated algorithms and personalisation", ("fedmtl.fl.algorithm", "fedmtl.fl.personalization")),
    "aggregator": Kind("server.aggregator", "aggregation of client updates (robust or not)", ("fedmtl.fl.aggregation", "fedmtl.fl.robust")),
    "server_optimizer": Kind("server.optimizer", "server optimisers", ("fedmtl.fl.server_opt", "fedmtl.fl.server_sparse")),
    "codec": Kind(
        "comm.uplink / comm.downlink / comm.downlink_delta", "codecs of a communication chain", ("fedmtl.comm.codecs",),
        # stage: where in the chain it sits; update_only: meaningful for updates, not for parameters
        traits={"stage": ("sparsifier", "quantiser", "byte"), "update_only": (True, False)},
        required=("stage",),
    ),
})

#: the settings of every configuration section (fedmtl.config.base.StrictModel's), imposed on registered config models
_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
_NAME = re.compile(r"^[a-z][a-z0-9_.+-]{0,63}$")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config_model: type[BaseModel]
    description: str
    origin: str
    traits: Mapping[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, str]:
        """Its configuration options (every field but ``name``), each as ``type = default``."""
        out = {}
        for key, info in self.config_model.model_fields.items():
            if key == "name":
                continue
            kind = next((m.kind for m in info.metadata if type(m).__name__ == "Registered"), None)
            shown = f"a registered {kind}" if kind else type_name(info.annotation)
            value = None if info.is_required() else info.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            default = "required" if info.is_required() else repr(value)
            out[key] = f"{shown} = {default}"
        return out


#: abbreviations whose full stop does not end a sentence ("unbiased (e.g. 4-bit, ...)", "Lin et al. 2018")
_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "cf.", "vs.")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    while end >= 0 and paragraph[: end + 1].endswith(_ABBREVIATIONS):
        end = paragraph.find(". ", end + 1)
    return paragraph if end < 0 else paragraph[: end + 1]


def type_name(annotation: Any) -> str:
    """A type as a user reads it in a config: ``float``, ``list[int]``, ``2 | 4 | 8``, ``str | None``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Union or origin is UnionType:
        return " | ".join(type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


_lock = threading.RLock()
_registry: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
_loaded: set[str] = set()  # kinds whose built-ins are imported
_plugins_loaded = False
_version = 0  # bumped on every change, so caches built from the registry know they are stale


def _check_kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise RegistryError(f"unknown component kind {kind!r}; allowed: {', '.join(KINDS)}") from None


def _config_model_for(kind: str, name: str, config_model: type[BaseModel] | None) -> type[BaseModel]:
    """``config_model`` checked (a pydantic model whose ``name`` field is ``Literal[name]``), or a model with
    only that field when None."""
    if config_model is None:
        model: type[BaseModel] = create_model(
            f"{name.title().replace('_', '')}Config",
            __config__=_STRICT,
            name=(Literal.__getitem__(name), name),  # type: ignore[arg-type]  # Literal[name], name known at run time
        )
        return model
    if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
        raise RegistryError(f"{kind} {name!r}: config_model must be a pydantic BaseModel subclass, got {config_model!r}")
    info = config_model.model_fields.get("name")
    if info is None or get_origin(info.annotation) is not Literal or get_args(info.annotation) != (name,) or info.default != name:
        raise RegistryError(
            f"{kind} {name!r}: {config_model.__name__} must declare `name: Literal[{name!r}] = {name!r}` "
            "(the configuration selects the component by that field)"
        )
    if all(config_model.model_config.get(k) == v for k, v in _STRICT.items()):  # type: ignore[misc]
        return config_model
    # like every section of the configuration: frozen, unknown keys and non-finite numbers refused
    strict: type[BaseModel] = type(
        config_model.__name__,
        (config_model,),
        {"model_config": ConfigDict(**config_model.model_config) | _STRICT, "__module__": config_model.__module__, "__doc__": config_model.__doc__},
    )
    return strict


def _check_traits(kind: str, name: str, traits: Mapping[str, Any]) -> None:
    spec = KINDS[kind]
    for key, value in traits.items():
        if key not in spec.traits:
            allowed = ", ".join(spec.traits) or "none"
            raise RegistryError(f"{kind} {name!r}: unknown trait {key!r}; a {kind} takes: {allowed}")
        if value not in spec.traits[key]:
            raise RegistryError(f"{kind} {name!r}: trait {key}={value!r}; allowed: {', '.join(map(repr, spec.traits[key]))}")
    missing = [t for t in spec.required if t not in traits]
    if missing:
        raise RegistryError(f"{kind} {name!r} must declare {', '.join(missing)} (allowed: {dict((t, spec.traits[t]) for t in missing)})")


def register(
    kind: str,
    name: str,
    factory: Callable[..., Any],
    config_model: type[BaseModel] | None = None,
    *,
    description: str | None = None,
    replace: bool = False,
    **traits: Any,
) -> Component:
    """Register a component so that configurations can select it by ``name``.

    Args:
        kind: one of :data:`KINDS` (``balancer``, ``scheme``, ``model``, ``trunk``, ``codec``,
            ``aggregator``, ``server_optimizer``, ``algorithm``).
        name: what a configuration writes (``mtl.balancer: {name: my_balancer}``): lower case, digits,
            ``_ . + -``, at most 64 characters.
        factory: builds the component from its validated config (see the module docstring for each
            kind's arguments).
        config_model: a pydantic model with ``name: Literal[name] = name`` and the component's options;
            None: the component takes no options.
        description: one line for ``fedmtl list``; default the first line of the config model's
            (else the factory's) docstring.
        replace: allow replacing a component already registered under ``name``.
        **traits: what the rest of fedmtl needs to know about it (a codec's ``stage``; a balancer's
            ``loss_only``): :data:`KINDS` lists them per kind.

    Returns:
        The registered :class:`Component`.

    Raises:
        RegistryError: an unknown kind or trait, a bad name or config model, or a name taken (without
            ``replace``).
    """
    _check_kind(kind)
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{kind} name {name!r} must match {_NAME.pattern} (lower case, digits, _ . + -)")
    if not callable(factory):
        raise RegistryError(f"{kind} {name!r}: factory must be callable, got {type(factory).__name__}")
    model = _config_model_for(kind, name, config_model)
    _check_traits(kind, name, traits)
    doc = (config_model.__doc__ if config_model is not None else None) or factory.__doc__ or ""
    line = description if description is not None else first_sentence(doc)
    origin = getattr(factory, "__module__", None) or "?"
    component = Component(kind, name, factory, model, line.strip(), origin, MappingProxyType(dict(traits)))
    global _version
    with _lock:
        taken = _registry[kind].get(name)
        if taken is not None and not replace:
            raise RegistryError(
                f"{kind} {name!r} is already registered (by {taken.origin}); pass replace=True to replace it, or choose another name"
            )
        _registry[kind][name] = component
        _version += 1
    return component


def unregister(kind: str, name: str) -> None:
    """Remove a registration (tests, or a plugin replacing itself); a name nobody registered is an error."""
    _check_kind(kind)
    global _version
    with _lock:
        if name not in _registry[kind]:
            raise RegistryError(f"no {kind} {name!r} to unregister")
        del _registry[kind][name]
        _version += 1


def _load_plugins() -> None:
    """Import every ``fedmtl.plugins`` entry point once (a callable is then called with no arguments)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # set first: a plugin that looks components up must not load itself again
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported, named
            raise PluginError(
                f"fedmtl plugin {ep.name!r} ({ep.value}, entry-point group {PLUGIN_GROUP!r}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _load(kind: str) -> None:
    """Import the built-ins of ``kind`` (they register themselves) and the plugins, once."""
    spec = _check_kind(kind)
    if kind not in _loaded:
        with _lock:
            if kind not in _loaded:
                _loaded.add(kind)  # first: the modules' own lookups must not import them again
                try:
                    for module in spec.modules:
                        importlib.import_module(module)
                except BaseException:
                    _loaded.discard(kind)
                    raise
    _load_plugins()


def get(kind: str, name: str) -> Component:
    """The component registered as ``name``; an unknown name is a :class:`RegistryError` listing the known ones."""
    _load(kind)
    try:
        return _registry[kind][name]
    except (KeyError, TypeError):
        raise RegistryError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(_registry[kind]))}") from None


def names(kind: str) -> list[str]:
    """The registered names of ``kind``, sorted."""
    _load(kind)
    return sorted(_registry[kind])


def components(kind: str | None = None) -> list[Component]:
    """Every registered component of ``kind`` (of every kind when None), by kind then name."""
    kinds = [kind] if kind is not None else list(KINDS)
    out: list[Component] = []
    for k in kinds:
        _load(k)
        out += [_registry[k][n] for n in sorted(_registry[k])]
    return out


def build(kind: str, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """The component ``cfg`` (a validated config model instance) describes: its factory called with ``cfg``
    and the kind's arguments."""
    return get(kind, cfg.name).factory(cfg, *args, **kwargs)


def version() -> int:
    """A number that changes whenever a registration does (for caches built from the registry)."""
    return _version


def options(cfg: BaseModel) -> dict[str, Any]:
    """A config's options (every field but ``name``) as keyword arguments of a component's constructor."""
    return cfg.model_dump(exclude={"name"})
