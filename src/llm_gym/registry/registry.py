"""The component registry: which classes a config can name, and how a validated node becomes an object.

Each register key (``optimizer``, ``model``, ...) has a ``class_resolver.ClassResolver`` that finds the
class, and each type_hint has the pydantic model of that class's constructor arguments. A registry is a
value: whoever validates or builds is handed one (``llm_gym.assembly.make_registry()`` makes the usual one).
"""

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from class_resolver import ClassResolver
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from llm_gym.errors import ConfigError
from llm_gym.registry.component import REGISTRY_CONTEXT_KEY, ComponentNode, unknown_type_hint_message
from llm_gym.registry.lookup_enum import LookupEnum


@dataclass(frozen=True)
class ComponentEntry:
    register_key: str
    type_hint: LookupEnum
    component: type
    config_model: type[BaseModel]
    node_model: type[ComponentNode]
    takes_config: bool
    """Whether the constructor takes the validated config model whole (``config: <its config model>``) rather
    than its fields as keyword arguments."""


class ComponentFactory:
    """A nested component handed to its parent unbuilt, so the parent can build it with its own arguments.

    A model builds one norm per layer (``norm_factory(dim=768)``); a blend builds each of its datasets.
    """

    def __init__(self, registry: "ResolverRegistry", node: ComponentNode):
        self._registry = registry
        self.node = node

    def __call__(self, **extra_kwargs: Any) -> Any:
        return self._registry.build_component_by_config(self.node, extra_kwargs=extra_kwargs)

    def __repr__(self) -> str:
        return f"ComponentFactory({self.node.register_key}:{self.node.type_hint.name})"


def config_model_from_signature(component: type, injected: Iterable[str] = ()) -> type[BaseModel]:
    """Derive a strict config model from a constructor; ``injected`` arguments come from ``extra_kwargs``."""
    injected = set(injected)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(component).parameters.items():
        if name in injected or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = Any if parameter.annotation is inspect.Parameter.empty else parameter.annotation
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (annotation, default)
    return create_model(
        f"{component.__name__}Config",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


ValidatedT = TypeVar("ValidatedT")


@dataclass(frozen=True)
class DeclaredComponent:
    """A component declared with ``register_component``, for every registry that ``add_declared`` later."""

    register_key: str
    type_hint: str
    component: type
    config_model: type[BaseModel]


_declared: list[DeclaredComponent] = []
"""What users' modules declared, in order. Only ``ResolverRegistry.add_declared`` reads it."""


def register_component(
    register_key: str,
    type_hint: str | None = None,
    config_model: type[BaseModel] | None = None,
    injected: Iterable[str] = (),
) -> Callable[[type], type]:
    """Class decorator declaring a component of your own under ``register_key`` (as ``type_hint``, by default
    the class name). Loading a config imports its ``user_modules`` and adds what they declared to the
    registry it validates with; ``llm_gym.assembly.make_registry()`` includes everything declared so far.

    Without ``config_model`` one is derived from the constructor signature, skipping ``injected`` arguments.
    """

    def declare(component: type) -> type:
        model = config_model or config_model_from_signature(component, injected)
        _declared.append(DeclaredComponent(register_key, type_hint or component.__name__, component, model))
        return component

    return declare


def takes_config_model(component: Callable[..., Any], config_model: type[BaseModel]) -> bool:
    """``component(config: <config_model or a base of it>, ...)``: constructed from its validated config model,
    which then is the one declaration of its arguments (names, types, ranges, defaults, descriptions)."""
    try:
        hints = typing.get_type_hints(component.__init__ if isinstance(component, type) else component)
    except Exception:  # annotations that do not resolve, or a builtin without any: not this convention
        return False
    annotation = hints.get("config")
    return isinstance(annotation, type) and issubclass(config_model, annotation)


def _holds_nodes(value: Any) -> bool:
    if isinstance(value, ComponentNode):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_nodes(item) for item in value)
    return isinstance(value, dict) and any(_holds_nodes(item) for item in value.values())


def _has_defaults_only(model: type[BaseModel]) -> bool:
    return all(not field.is_required() for field in model.model_fields.values())


class ResolverRegistry:
    def __init__(self) -> None:
        self._resolvers: dict[str, ClassResolver] = {}
        self._config_models: dict[str, dict[str, type[BaseModel]]] = {}
        self._entries: dict[str, dict[str, ComponentEntry]] = {}
        self._added: set[DeclaredComponent] = set()

    # ---- registration -------------------------------------------------------------------------
    def register_component(
        self,
        register_key: str,
        type_hint: str,
        component: type,
        config_model: type[BaseModel] | None = None,
        injected: Iterable[str] = (),
    ) -> None:
        """Make ``component`` buildable as ``{type_hint: <type_hint>, config: ...}`` under ``register_key``.

        Without ``config_model`` one is derived from the constructor signature; list the arguments the
        framework passes at build time (``params``, ``optimizer``, ...) in ``injected``.
        """
        existing = self._config_models.get(register_key, {})
        if type_hint in existing:
            raise ValueError(f"type_hint '{type_hint}' is already registered under '{register_key}'")
        resolver = self._resolvers.setdefault(register_key, ClassResolver([], base=object, suffix=""))
        resolver.register(component, synonyms=[type_hint], raise_on_conflict=False)
        model = config_model or config_model_from_signature(component, injected)
        self._config_models.setdefault(register_key, {})[type_hint] = model
        self._entries.pop(register_key, None)

    def add_resolver(
        self,
        register_key: str,
        resolver: ClassResolver,
        config_models: Mapping[str, type[BaseModel]] | None = None,
        injected: Iterable[str] = (),
    ) -> None:
        """Register every class of a ``class_resolver.ClassResolver`` under ``register_key``.

        Type hints are the class names; ``config_models`` maps a class name to its config model, and a
        class without one gets a model derived from its constructor.
        """
        config_models = dict(config_models or {})
        for component in resolver:
            name = component.__name__
            self.register_component(register_key, name, component, config_models.pop(name, None), injected)
        if config_models:
            raise ValueError(f"config models for classes not in the resolver: {sorted(config_models)}")

    def add_declared(self) -> None:
        """Register the components declared with ``register_component`` that this registry does not hold yet."""
        for declared in _declared:
            if declared not in self._added:
                self.register_component(
                    declared.register_key, declared.type_hint, declared.component, declared.config_model
                )
                self._added.add(declared)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, schema: type[ValidatedT] | Any, data: Any) -> ValidatedT:
        """``data`` validated as ``schema`` (a pydantic model, or any type pydantic validates, such as
        ``Component("optimizer")``), with every component node in it validated against this registry."""
        return TypeAdapter(schema).validate_python(data, context={REGISTRY_CONTEXT_KEY: self})

    # ---- lookup -------------------------------------------------------------------------------
    def register_keys(self) -> list[str]:
        return sorted(self._config_models)

    def type_hint_names(self, register_key: str) -> list[str]:
        return sorted(self._config_models.get(register_key, {}))

    def find_entry(self, register_key: str, type_hint: Any) -> ComponentEntry | None:
        entries = self._entries_for(register_key)
        if not entries:
            return None
        enum = next(iter(entries.values())).type_hint.__class__
        # A member of an older enum (the key gained a component since the node was validated) by its name.
        query = type_hint.name if isinstance(type_hint, LookupEnum) else type_hint
        try:
            member = enum(query)
        except ValueError:
            return None
        return entries[member.name]

    def _entries_for(self, register_key: str) -> dict[str, ComponentEntry]:
        if register_key not in self._entries:
            self._entries[register_key] = self._make_entries(register_key)
        return self._entries[register_key]

    def _make_entries(self, register_key: str) -> dict[str, ComponentEntry]:
        models = self._config_models.get(register_key, {})
        if not models:
            return {}
        resolver = self._resolvers[register_key]
        enum_name = "".join(part.capitalize() for part in register_key.split("_")) + "TypeHint"
        # Values are the names: two type hints may share a class (e.g. with different defaults).
        enum = LookupEnum(enum_name, [(name, name) for name in models])
        entries = {}
        for name, config_model in models.items():
            config_field: Any = (
                (config_model, Field(default_factory=config_model))
                if _has_defaults_only(config_model)
                else (config_model, ...)
            )
            node_model = create_model(
                f"{enum_name}{name}Node", __base__=ComponentNode, type_hint=(enum, ...), config=config_field
            )
            node_model.register_key = register_key
            component = resolver.lookup(name)
            takes_config = takes_config_model(component, config_model)
            entries[name] = ComponentEntry(register_key, enum[name], component, config_model, node_model, takes_config)
        return entries

    # ---- building -----------------------------------------------------------------------------
    def build_component_by_config(self, config: ComponentNode, extra_kwargs: Mapping[str, Any] | None = None) -> Any:
        """Build a validated node, plus ``extra_kwargs``. A constructor that takes ``config: <its config model>``
        receives the validated model whole, and each field holding nested component nodes again as
        ``ComponentFactory``s under the field's name; any other gets every field as a keyword argument, nested
        component nodes as factories."""
        entry = self.find_entry(config.register_key, config.type_hint)
        if entry is None:
            raise ConfigError(f"unknown type_hint '{config.type_hint}' for '{config.register_key}'")
        fields = {name: getattr(config.config, name) for name in type(config.config).model_fields}
        if entry.takes_config:
            kwargs = {"config": config.config}
            kwargs.update((name, self._factories_for(value)) for name, value in fields.items() if _holds_nodes(value))
        else:
            kwargs = {name: self._factories_for(value) for name, value in fields.items()}
        kwargs.update(extra_kwargs or {})
        return self._instantiate(entry.component, entry.type_hint.name, kwargs)

    def build_component_by_key_query(
        self, register_key: str, type_hint: str, extra_kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        """Build a registered component straight from keyword arguments, without a config node. For a constructor
        that takes its config model, the arguments that are fields of the model are validated into it."""
        entry = self.find_entry(register_key, type_hint)
        if entry is None:
            raise ConfigError(unknown_type_hint_message(register_key, type_hint, self.type_hint_names(register_key)))
        kwargs = dict(extra_kwargs or {})
        if entry.takes_config and "config" not in kwargs:
            fields = {name: kwargs.pop(name) for name in list(kwargs) if name in entry.config_model.model_fields}
            try:
                kwargs["config"] = self.validate(entry.config_model, fields)
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise ConfigError(f"cannot build '{entry.type_hint.name}': {problems}") from error
        return self._instantiate(entry.component, entry.type_hint.name, kwargs)

    def _instantiate(self, component: Callable[..., Any], type_hint: str, kwargs: dict[str, Any]) -> Any:
        try:
            inspect.signature(component).bind(**kwargs)
        except TypeError as error:
            raise ConfigError(f"cannot build '{type_hint}': {error}") from error
        return component(**kwargs)

    def _factories_for(self, value: Any) -> Any:
        if isinstance(value, ComponentNode):
            return ComponentFactory(self, value)
        if isinstance(value, list | tuple):
            return type(value)(self._factories_for(item) for item in value)
        if isinstance(value, dict):
            return {key: self._factories_for(item) for key, item in value.items()}
        return value
