"""The `{type_hint, config}` node that every swappable component is written as in YAML.

A field annotated ``Component("optimizer")`` accepts any component registered under the key
``optimizer``. Its ``config`` is validated against the model registered for *that* type_hint, so a
mistake produces one precise error at ``optimizer.config.<field>`` rather than one per union member.
The registry comes with each validation, in pydantic's validation context (``ResolverRegistry.validate``):
nothing here reads a global.
"""

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from llm_gym.registry.lookup_enum import LookupEnum

if TYPE_CHECKING:
    from llm_gym.registry.registry import ComponentEntry, ResolverRegistry

REGISTRY_CONTEXT_KEY = "registry"
"""The key of pydantic's validation context that holds the registry nodes are validated against."""


class ComponentNode(BaseModel):
    """A validated component: which registered class to build, and its validated constructor arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    register_key: ClassVar[str] = ""
    type_hint: LookupEnum
    config: BaseModel

    def to_yaml_dict(self) -> dict[str, Any]:
        return {"type_hint": self.type_hint.name, "config": self.config.model_dump(mode="json")}


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """``did you mean 'AdamW'?`` when one of ``valid`` is close to ``name`` (a typo), else an empty string."""
    matches = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean '{matches[0]}'?" if matches else ""


def unknown_type_hint_message(register_key: str, type_hint: str, names: Sequence[str]) -> str:
    suggestion = did_you_mean(type_hint, names)
    return (
        f"unknown type_hint '{type_hint}' for '{register_key}'; "
        f"{suggestion + ' ' if suggestion else ''}valid names: {', '.join(names) or 'none registered'}"
    )


def registry_of(info: ValidationInfo) -> "ResolverRegistry":
    """The registry a validation runs against, from its context (``ResolverRegistry.validate`` puts it there)."""
    registry = (info.context or {}).get(REGISTRY_CONTEXT_KEY)
    if registry is None:
        raise RuntimeError(
            "component nodes are validated against a registry: registry.validate(Model, data), or "
            f"Model.model_validate(data, context={{'{REGISTRY_CONTEXT_KEY}': registry}})"
        )
    return registry


def _validate_node(register_key: str, value: Any, info: ValidationInfo) -> ComponentNode:
    if isinstance(value, ComponentNode):
        return value
    registry = registry_of(info)
    names = registry.type_hint_names(register_key)
    valid = ", ".join(names) or "none registered"
    if not isinstance(value, Mapping):
        raise PydanticCustomError(
            "component_node",
            "expected a component (a mapping with 'type_hint' and 'config') for '{key}'; type_hint one of: {valid}",
            {"key": register_key, "valid": valid},
        )
    if "type_hint" not in value:
        raise PydanticCustomError(
            "missing_type_hint",
            "missing 'type_hint' for '{key}' (one of: {valid})",
            {"key": register_key, "valid": valid},
        )
    entry = registry.find_entry(register_key, value["type_hint"])
    if entry is None:
        message = unknown_type_hint_message(register_key, str(value["type_hint"]), names)
        raise PydanticCustomError("unknown_type_hint", "{message}", {"message": message})
    return entry.node_model.model_validate({**value, "type_hint": entry.type_hint}, context=info.context)


@dataclass(frozen=True)
class ComponentSlot:
    """Marks a ``Component(...)`` annotation, so a config path can be traced to its register key."""

    register_key: str


def Component(register_key: str) -> Any:
    """``optimizer: Component("optimizer")``: a field holding any component registered under that key."""
    return Annotated[
        ComponentNode,
        ComponentSlot(register_key),
        PlainValidator(lambda value, info: _validate_node(register_key, value, info)),
        PlainSerializer(lambda node: node.to_yaml_dict()),
    ]


def _slot_of(annotation: Any, metadata: Sequence[Any] = ()) -> ComponentSlot | None:
    extras = [*metadata, *(get_args(annotation)[1:] if get_origin(annotation) is Annotated else ())]
    return next((extra for extra in extras if isinstance(extra, ComponentSlot)), None)


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X``: an optional section is walked like a present one."""
    if get_origin(annotation) in (Union, UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def value_at(config: Any, path: Sequence[str]) -> Any:
    """The value at a dotted path (list items by index) of a resolved config, or None where there is none."""
    for part in path:
        if isinstance(config, Mapping):
            config = config.get(part)
        elif isinstance(config, list) and part.isdigit() and int(part) < len(config):
            config = config[int(part)]
        else:
            return None
    return config


def _annotation_at(
    schema: type[BaseModel], path: Sequence[str], config: Mapping[str, Any], registry: "ResolverRegistry"
) -> tuple[Any, Sequence[Any]]:
    """The annotation (and its field metadata) that validates the value at ``path`` of ``config``.

    The walk follows the schema's fields, ``dict``/``list`` items and, inside a component, the config model
    of the type_hint the node names. ``(None, ())`` where the schema does not reach.
    """
    annotation: Any = schema
    metadata: Sequence[Any] = ()
    for depth, part in enumerate(path):
        annotation = _without_none(annotation)
        slot = _slot_of(annotation, metadata)
        annotation = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
        if slot is not None:
            entry = _entry_of_node(slot, value_at(config, path[:depth]), registry) if part == "config" else None
            if entry is None:
                return None, ()
            annotation, metadata = entry.config_model, ()
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            field = annotation.model_fields[part]
            annotation, metadata = field.annotation, field.metadata
        elif get_origin(annotation) is dict:
            annotation, metadata = get_args(annotation)[1], ()
        elif get_origin(annotation) is list and part.isdigit():
            annotation, metadata = get_args(annotation)[0], ()
        else:
            return None, ()
    return _without_none(annotation), metadata


def find_component_entry(
    schema: type[BaseModel], path: Sequence[str], config: Mapping[str, Any], registry: "ResolverRegistry"
) -> "ComponentEntry | None":
    """The registry entry of the component node at ``path`` in ``config``, a resolved dict for ``schema``.

    None when ``path`` is no component node, or names an unknown type_hint.
    """
    slot = _slot_of(*_annotation_at(schema, path, config, registry))
    return None if slot is None else _entry_of_node(slot, value_at(config, path), registry)


def model_at(
    schema: type[BaseModel], path: Sequence[str], config: Mapping[str, Any], registry: "ResolverRegistry"
) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` in ``config`` (a component node's own model
    for a node), or None where the schema does not say."""
    annotation, metadata = _annotation_at(schema, path, config, registry)
    slot = _slot_of(annotation, metadata)
    if slot is not None:
        entry = _entry_of_node(slot, value_at(config, path), registry)
        return None if entry is None else entry.node_model
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _entry_of_node(slot: ComponentSlot, node: Any, registry: "ResolverRegistry") -> "ComponentEntry | None":
    if not isinstance(node, Mapping) or not isinstance(node.get("type_hint"), str):
        return None
    return registry.find_entry(slot.register_key, node["type_hint"])
