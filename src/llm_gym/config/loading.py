"""YAML → resolved dict → validated pydantic model, with errors a user can act on.

Order matters: command-line overrides are merged into the raw YAML *before* interpolations resolve, so
``training.global_batch_size=64`` also changes every ``${training.global_batch_size}``.
"""

import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import omegaconf
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from llm_gym.errors import ConfigError
from llm_gym.registry import ResolverRegistry
from llm_gym.registry.component import did_you_mean, find_component_entry, model_at, value_at

ModelT = TypeVar("ModelT", bound=BaseModel)

USER_MODULES_KEY = "user_modules"

_DIST_ENV = {
    "rank": ("RANK", 0),
    "local_rank": ("LOCAL_RANK", 0),
    "world_size": ("WORLD_SIZE", 1),
    "local_world_size": ("LOCAL_WORLD_SIZE", 1),
}


def _dist_resolver(name: str) -> int:
    """``${dist:world_size}`` and friends: torchrun's environment, or a plain single process without it."""
    if name not in _DIST_ENV:
        raise ValueError(f"unknown key '{name}' for ${{dist:...}}; valid: {', '.join(_DIST_ENV)}")
    variable, default = _DIST_ENV[name]
    return int(os.environ.get(variable, default))


def register_resolvers() -> None:
    if OmegaConf.has_resolver("dist"):
        return
    # omegaconf 2.4 renamed register_new_resolver to register_resolver (and deprecated the old name);
    # in 2.3 register_resolver is the legacy string-only API.
    if tuple(int(part) for part in omegaconf.__version__.split(".")[:2]) >= (2, 4):
        OmegaConf.register_resolver("dist", _dist_resolver)
    else:
        OmegaConf.register_new_resolver("dist", _dist_resolver)


def _omegaconf_message(error: OmegaConfBaseException) -> str:
    """OmegaConf's own first line, without the wrapper text it adds around a resolver's exception."""
    message = str(error).splitlines()[0]
    message = re.sub(r"^\w+ raised while resolving interpolation: ", "", message)
    return message[1:-1] if len(message) > 1 and message[0] == message[-1] == '"' else message


def _yaml_problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or str(error).splitlines()[0]


def read_config_file(path: Path) -> DictConfig:
    """Read the YAML as it is written; nothing is resolved yet."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:  # a directory, no permission, an I/O error
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error in {path}{where}: {_yaml_problem(error)}") from error
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "<root>"
        raise ConfigError(f"{key}: invalid interpolation in {path}: {_omegaconf_message(error)}") from error
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level, not a list")
    return raw


@dataclass
class TypeHintSwap:
    """An override changed the type_hint of the node at ``node_path``.

    The node's config was written for the old type, so the keys the new type's config model does not accept
    are dropped (see ``drop_keys_of_replaced_types``); ``set_after`` holds the config keys overrides set after
    the swap, which stay whatever they are, so a mistake among them is still reported.
    """

    node_path: tuple[str, ...]
    set_after: set[str] = field(default_factory=set)


def apply_overrides(raw: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, list[TypeHintSwap]]:
    """Merge ``dotted.key=value`` overrides and apply ``~dotted.key`` deletions, in order."""
    swaps: dict[tuple[str, ...], TypeHintSwap] = {}
    for override in overrides:
        if override.startswith("~"):
            _delete_key(raw, override)
            continue
        key = _override_key(override)
        parts = tuple(key.split("."))
        value = _parse_override(override, parts)
        # The component node whose type the override may change: `optimizer.type_hint=SGD`, or a whole node
        # `optimizer={type_hint: SGD, config: {lr: 0.1}}`, which merges into the file's node like any mapping.
        node = parts[:-1] if parts[-1] == "type_hint" else parts if _is_component_node(value) else None
        type_hint_key = None if node is None else ".".join((*node, "type_hint"))
        previous = None if type_hint_key is None else _type_hint_at(raw, type_hint_key)
        _merge_override(raw, parts, value, override)
        if type_hint_key is not None and node not in swaps and _type_hint_at(raw, type_hint_key) != previous:
            swaps[node] = TypeHintSwap(node)
        for swap in swaps.values():
            _note_set_after(swap, parts, value)
    return raw, list(swaps.values())


def _is_component_node(value: Any) -> bool:
    return isinstance(value, dict) and "type_hint" in value


def _type_hint_at(raw: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(raw, key, throw_on_resolution_failure=False)
    except OmegaConfBaseException:  # the path runs through a scalar or a list; the merge reports it
        return None


def _note_set_after(swap: TypeHintSwap, override_parts: tuple[str, ...], value: Any) -> None:
    config_path = (*swap.node_path, "config")
    if override_parts == swap.node_path and isinstance(value, dict):  # the whole node: `optimizer={...}`
        override_parts, value = config_path, value.get("config")
    if override_parts[: len(config_path)] != config_path:
        return
    if len(override_parts) > len(config_path):
        swap.set_after.add(override_parts[len(config_path)])
    elif isinstance(value, dict):  # the whole config given at once: `optimizer.config={momentum: 0.9}`
        swap.set_after.update(str(name) for name in value)


def _override_key(override: str) -> str:
    key, sep, _ = override.partition("=")
    if not sep or not key.strip() or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{override}': expected dotted.key=value, e.g. training.max_steps=100")
    return key


def _parse_override(override: str, parts: tuple[str, ...]) -> Any:
    """The override's value, parsed as YAML; interpolations in it stay unresolved, to resolve in the config."""
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([override]), resolve=False)
    except yaml.YAMLError as error:
        raise ConfigError(f"bad override '{override}': the value is not valid YAML: {_yaml_problem(error)}") from error
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        raise ConfigError(f"bad override '{override}': {str(error).splitlines()[0]}") from error
    for part in parts:
        value = value[part]
    return value


def _merge_override(raw: DictConfig, parts: tuple[str, ...], value: Any, override: str) -> None:
    """Set the key in place, merging a mapping into the one there; a number indexes a list (``loggers.0.x``)."""
    node: Any = raw
    for depth, part in enumerate(parts):
        if isinstance(node, ListConfig) and not (part.isdigit() and int(part) < len(node)):
            where = ".".join(parts[:depth])
            how = (
                f"name one by its index, {where}.0 to {where}.{len(node) - 1}"
                if node
                else f"set it whole: {where}=[...]"
            )
            raise ConfigError(f"bad override '{override}': {where} is a list of {len(node)} item(s); {how}")
        node = node[int(part)] if isinstance(node, ListConfig) else node.get(part)
        if not isinstance(node, (DictConfig, ListConfig)):
            break  # a new key or a scalar: update builds the mappings the rest of the path needs
    try:
        OmegaConf.update(raw, ".".join(parts), value, merge=True)
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        raise ConfigError(f"bad override '{override}': {str(error).splitlines()[0]}") from error


def _delete_key(raw: DictConfig, override: str) -> None:
    """``~dotted.key`` removes the key, as in Hydra; a list item is named by its index (``~loggers.1``)."""
    key = override[1:]
    if "=" in key or not key.strip() or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{override}': expected ~dotted.key, e.g. ~optimizer.config.betas")
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(raw, parent_key, throw_on_resolution_failure=False) if parent_key else raw
    if isinstance(parent, DictConfig) and name in parent:
        del parent[name]
    elif isinstance(parent, ListConfig) and name.isdigit() and int(name) < len(parent):
        del parent[int(name)]
    else:
        raise ConfigError(f"bad override '{override}': there is no key '{key}' to delete")


def drop_keys_of_replaced_types(
    resolved: dict[str, Any], schema: type[BaseModel], swaps: Sequence[TypeHintSwap], registry: ResolverRegistry
) -> None:
    """Drop the config keys an overridden type_hint's config model does not accept, e.g. AdamW's ``betas``
    after ``optimizer.type_hint=SGD``; the keys it accepts (``lr``) keep their values."""
    for swap in swaps:
        entry = find_component_entry(schema, swap.node_path, resolved, registry)
        config = value_at(resolved, (*swap.node_path, "config"))
        if entry is None or not isinstance(config, dict):
            continue  # not a component node the schema knows, or an unknown type_hint: validation says which
        fields = entry.config_model.model_fields
        accepted = set(fields) | {info.alias for info in fields.values() if info.alias}
        for name in [name for name in config if name not in accepted and name not in swap.set_after]:
            del config[name]


def resolve(raw: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation; a failure names the key whose value could not be resolved."""
    register_resolvers()
    try:
        resolved = OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = _omegaconf_message(error) + _misspelt_target(raw, error)
        raise ConfigError(f"{key}: cannot resolve interpolation: {message}" if key else message) from error
    return resolved


def _misspelt_target(raw: DictConfig, error: OmegaConfBaseException) -> str:
    """``; the file has 'training.max_stepz', a typo?`` when a key close to the missing one exists."""
    missing = re.search(r"Interpolation key '([^']+)' not found", str(error))
    if not isinstance(error, InterpolationKeyError) or missing is None:
        return ""
    *parents, leaf = missing.group(1).split(".")
    section = OmegaConf.select(raw, ".".join(parents)) if parents else raw
    if not isinstance(section, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(name) for name in section], n=1)
    return f"; the file has '{'.'.join([*parents, close[0]])}', a typo?" if close else ""


def import_user_modules(config: dict[str, Any], config_dir: Path, registry: ResolverRegistry) -> None:
    """Import the modules listed under ``user_modules`` and add the components they declare to ``registry``,
    before validation.

    The config file's directory is importable, so a ``my_components.py`` beside the YAML just works.
    """
    modules = config.get(USER_MODULES_KEY) or []
    if not isinstance(modules, list) or not all(isinstance(name, str) for name in modules):
        raise ConfigError(f"{USER_MODULES_KEY}: expected a list of module names")
    if modules and str(config_dir) not in sys.path:
        sys.path.insert(0, str(config_dir))
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"{USER_MODULES_KEY}: cannot import '{name}': {error}") from error
        except Exception as error:  # the user's own code failed while importing; --debug shows where
            raise ConfigError(
                f"{USER_MODULES_KEY}: importing '{name}' failed: {type(error).__name__}: {error}"
            ) from error
    try:
        registry.add_declared()
    except ValueError as error:  # a declared type_hint that is taken
        raise ConfigError(f"{USER_MODULES_KEY}: {error}") from error


def format_validation_error(
    error: ValidationError,
    schema: type[BaseModel] | None = None,
    config: dict[str, Any] | None = None,
    registry: ResolverRegistry | None = None,
) -> str:
    """One line per error, at its dotted key; with the ``schema``, ``config`` and ``registry`` validated, an
    unknown key also gets the closest valid one (or the few valid ones)."""
    lines = []
    for detail in error.errors():
        location = ""
        for part in detail["loc"]:
            location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        message = _message(detail)
        if detail["type"] == "extra_forbidden" and schema is not None and config is not None and registry is not None:
            message += _valid_keys_hint(detail["loc"], schema, config, registry)
        # A check across sections (at the root) names its keys in its own message.
        where = f"{location}: " if location else ""
        lines.append(f"  {where}{message}{_input_hint(detail)}")
    count = len(lines)
    return f"invalid config ({count} error{'s' if count > 1 else ''}):\n" + "\n".join(lines)


# pydantic's wording speaks of fields and inputs; a YAML author thinks in keys.
_MESSAGES = {"missing": "missing required key", "extra_forbidden": "unknown key"}

# Listing a section's keys helps while the list stays short; a long one is what the docs are for.
_MAX_KEYS_LISTED = 12


def _message(detail: dict[str, Any]) -> str:
    if detail["type"] in _MESSAGES:
        return _MESSAGES[detail["type"]]
    return detail["msg"].removeprefix("Value error, ")


def _valid_keys_hint(
    location: tuple[str | int, ...], schema: type[BaseModel], config: dict[str, Any], registry: ResolverRegistry
) -> str:
    """``; did you mean 'max_steps'?`` for a near miss, else ``; valid keys: ...`` for a short section."""
    section = model_at(schema, [str(part) for part in location[:-1]], config, registry)
    if section is None:
        return ""
    valid = [info.alias or name for name, info in section.model_fields.items()]
    if suggestion := did_you_mean(str(location[-1]), valid):
        return f"; {suggestion}"
    return f"; valid keys: {', '.join(valid)}" if len(valid) <= _MAX_KEYS_LISTED else ""


def _input_hint(detail: dict[str, Any]) -> str:
    if detail["type"] in ("missing", "extra_forbidden", "unknown_type_hint", "component_node", "missing_type_hint"):
        return ""
    if detail["type"] == "value_error" and isinstance(detail.get("input"), dict):
        return ""  # a cross-field rule: its message names the keys, the whole section would only be noise
    shown = repr(detail.get("input"))
    return f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def validate_config(resolved: dict[str, Any], model: type[ModelT], registry: ResolverRegistry) -> ModelT:
    try:
        return registry.validate(model, resolved)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model, resolved, registry)) from error


def load_config(
    path: Path, model: type[ModelT], overrides: Sequence[str] = (), *, registry: ResolverRegistry
) -> tuple[ModelT, dict[str, Any]]:
    """Load, override, resolve and validate against ``registry``, which gains the components that
    ``user_modules`` declare. Returns the validated model and the resolved plain dict."""
    raw, swaps = apply_overrides(read_config_file(path), overrides)
    resolved = resolve(raw)
    import_user_modules(resolved, Path(path).resolve().parent, registry)
    drop_keys_of_replaced_types(resolved, model, swaps, registry)
    return validate_config(resolved, model, registry), resolved
