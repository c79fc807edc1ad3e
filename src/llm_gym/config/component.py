"""The `{type_hint, config}` node that every swappable component is written as in YAML.

A field annotated ``Component("optimizer")`` accepts any component registered under the key
``optimizer``. Its ``config`` is validated against the model registered for *that* type_hint, so a
mistake produces one precise error at ``optimizer.config.<field>`` rather than one per union member.
"""

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from llm_gym.config.lookup_enum import LookupEnum


class ComponentNode(BaseModel):
    """A validated component: which registered class to build, and its validated constructor arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    register_key: ClassVar[str] = ""
    type_hint: LookupEnum
    config: BaseModel

    def to_yaml_dict(self) -> dict[str, Any]:
        return {"type_hint": self.type_hint.name, "config": self.config.model_dump(mode="json")}


def _validate_node(register_key: str, value: Any) -> ComponentNode:
    if isinstance(value, ComponentNode):
        return value
    # Imported here: the registry imports this module, and the built-in components import the registry.
    from llm_gym.registry import get_registry

    registry = get_registry()
    valid = ", ".join(registry.type_hint_names(register_key)) or "none registered"
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
        raise PydanticCustomError(
            "unknown_type_hint",
            "unknown type_hint '{hint}' for '{key}'; valid names: {valid}",
            {"hint": str(value["type_hint"]), "key": register_key, "valid": valid},
        )
    return entry.node_model.model_validate({**value, "type_hint": entry.type_hint})


def Component(register_key: str) -> Any:
    """``optimizer: Component("optimizer")``: a field holding any component registered under that key."""
    return Annotated[
        ComponentNode,
        PlainValidator(lambda value: _validate_node(register_key, value)),
        PlainSerializer(lambda node: node.to_yaml_dict()),
    ]
