"""YAML files → composed → overridden → resolved dict → validated pydantic model, with errors a user can act on.

Order matters: the files are composed (``composition.py``) and the command-line overrides merged into the result
*before* interpolations resolve, so ``training.global_batch_size=64`` also changes every
``${training.global_batch_size}``, whichever file holds it.
"""

import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import omegaconf
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from llm_gym.config.composition import (
    COMMAND_LINE,
    USER_MODULES_KEY,
    ComposedConfig,
    KeyOrigins,
    TypeHintSwap,
    YAMLExpansionError,
    check_yaml_expansion,
    compose,
    omegaconf_message,
    yaml_problem,
)
from llm_gym.errors import ConfigError
from llm_gym.registry import ResolverRegistry
from llm_gym.registry.component import did_you_mean, find_component_entry, model_at, value_at

ModelT = TypeVar("ModelT", bound=BaseModel)

COMPOSITION_DEFAULTS = "composition_defaults"

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


def apply_overrides(composed: ComposedConfig, overrides: Sequence[str]) -> None:
    """Merge ``dotted.key=value`` overrides, append ``dotted.key+=value`` and apply ``~dotted.key`` deletions,
    in order, into the composed config."""
    raw, swaps = composed.raw, composed.swaps
    for override in overrides:
        if override.startswith("~"):
            _delete_key(raw, override)
            continue
        key, append = _override_key(override)
        parts = tuple(key.split("."))
        value = _parse_override(override, parts)
        if append:
            value = value if isinstance(value, list) else [value]
            if _append_to_list(composed, override, parts, value):
                continue
            # No list there yet: the items are the list, set like any value.
        # The component node whose type the override may change: `optimizer.type_hint=SGD`, or a whole node
        # `optimizer={type_hint: SGD, config: {lr: 0.1}}`, which merges into the file's node like any mapping.
        node = parts[:-1] if parts[-1] == "type_hint" else parts if _is_component_node(value) else None
        type_hint_key = None if node is None else ".".join((*node, "type_hint"))
        previous = None if type_hint_key is None else _type_hint_at(raw, type_hint_key)
        _merge_override(raw, parts, value, override)
        if type_hint_key is not None and _type_hint_at(raw, type_hint_key) != previous:
            swaps.type_changed(node)
        swaps.note_set(parts, value)
        composed.origins.record(COMMAND_LINE, value, parts)


def _is_component_node(value: Any) -> bool:
    return isinstance(value, dict) and "type_hint" in value


def _type_hint_at(raw: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(raw, key, throw_on_resolution_failure=False)
    except OmegaConfBaseException:  # the path runs through a scalar or a list; the merge reports it
        return None


def _override_key(override: str) -> tuple[str, bool]:
    """The dotted key of ``key=value`` or ``key+=value``, and whether it appends."""
    key, sep, _ = override.partition("=")
    append = key.endswith("+")
    key = key.removesuffix("+")
    if not sep or not key.strip() or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{override}': expected dotted.key=value, e.g. training.max_steps=100")
    return key, append


def _parse_override(override: str, parts: tuple[str, ...]) -> Any:
    """The override's value, parsed as YAML; interpolations in it stay unresolved, to resolve in the config."""
    text = override.partition("=")[2]
    try:
        check_yaml_expansion(text)
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"{'.'.join(parts)}={text}"]), resolve=False)
    except YAMLExpansionError as error:
        raise ConfigError(f"bad override '{override}': the value is refused: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"bad override '{override}': the value is not valid YAML: {yaml_problem(error)}") from error
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        raise ConfigError(f"bad override '{override}': {str(error).splitlines()[0]}") from error
    for part in parts:
        value = value[part]
    return value


def _append_to_list(composed: ComposedConfig, override: str, parts: tuple[str, ...], items: list[Any]) -> bool:
    """``dotted.key+=value`` (a list value extends, any other is one item): append ``items`` to the list at the
    key. False where the key is not there yet."""
    key = ".".join(parts)
    parent, name = _parent_of(composed.raw, key)
    if not _has_child(parent, name):
        return False
    if OmegaConf.is_interpolation(parent, _child_key(parent, name)):
        problem = f"{key} is an interpolation; set the list whole: {key}=[...]"
    elif not isinstance(target := parent[_child_key(parent, name)], ListConfig):
        problem = f"{key} is {'a mapping' if isinstance(target, DictConfig) else repr(target)}, not a list"
    else:
        for item in items:
            composed.origins.record(COMMAND_LINE, item, (*parts, str(len(target))))
            target.append(item)
        composed.swaps.note_set(parts, items)
        return True
    raise ConfigError(f"bad override '{override}': {problem}; += appends to a list")


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
    parent, name = _parent_of(raw, key)
    if not _has_child(parent, name):
        raise ConfigError(f"bad override '{override}': there is no key '{key}' to delete")
    del parent[_child_key(parent, name)]


def _parent_of(raw: DictConfig, key: str) -> tuple[Any, str]:
    """The node holding the dotted ``key`` (None where there is none), and the key's last part."""
    parent_key, _, name = key.rpartition(".")
    return (OmegaConf.select(raw, parent_key, throw_on_resolution_failure=False) if parent_key else raw), name


def _has_child(parent: Any, name: str) -> bool:
    if isinstance(parent, ListConfig):
        return name.isdigit() and int(name) < len(parent)
    return isinstance(parent, DictConfig) and name in parent


def _child_key(parent: DictConfig | ListConfig, name: str) -> int | str:
    return int(name) if isinstance(parent, ListConfig) else name


def drop_keys_of_replaced_types(
    resolved: dict[str, Any], schema: type[BaseModel], swaps: Iterable[TypeHintSwap], registry: ResolverRegistry
) -> None:
    """Drop the config keys a replaced type_hint's config model does not accept, e.g. AdamW's ``betas`` after
    ``optimizer.type_hint=SGD`` or a later file's ``optimizer: {type_hint: SGD}``; the keys it accepts (``lr``)
    keep their values."""
    for swap in swaps:
        entry = find_component_entry(schema, swap.node_path, resolved, registry)
        config = value_at(resolved, (*swap.node_path, "config"))
        if entry is None or not isinstance(config, dict):
            continue  # not a component node the schema knows, or an unknown type_hint: validation says which
        fields = entry.config_model.model_fields
        accepted = set(fields) | {info.alias for info in fields.values() if info.alias}
        for name in [name for name in config if name not in accepted and name not in swap.set_after]:
            del config[name]


def resolve(raw: DictConfig, origins: KeyOrigins | None = None) -> dict[str, Any]:
    """Resolve every interpolation; a failure names the key whose value could not be resolved (and, with the
    ``origins`` of the config, the default file that set it)."""
    register_resolvers()
    try:
        resolved = OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = omegaconf_message(error) + _misspelt_target(raw, error)
        if not key:
            raise ConfigError(message) from error
        origin = "" if origins is None else origins.remark(None, re.findall(r"[^.\[\]]+", key))
        raise ConfigError(f"{key}: cannot resolve interpolation: {message}{origin}") from error
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


def import_user_modules(
    config: dict[str, Any], config_dir: Path, registry: ResolverRegistry, module_dirs: Mapping[str, Path] | None = None
) -> None:
    """Import the modules listed under ``user_modules`` and add the components they declare to ``registry``,
    before validation.

    A module's directory is importable: the one ``module_dirs`` gives it (that of the composed file that lists
    it), else ``config_dir``. So a ``my_components.py`` beside the YAML that names it just works.
    """
    modules = config.get(USER_MODULES_KEY) or []
    if not isinstance(modules, list) or not all(isinstance(name, str) for name in modules):
        raise ConfigError(f"{USER_MODULES_KEY}: expected a list of module names")
    import_modules(modules, config_dir, USER_MODULES_KEY, registry, module_dirs)


def import_modules(
    names: Sequence[str],
    directory: Path,
    named_by: str,
    registry: ResolverRegistry,
    module_dirs: Mapping[str, Path] | None = None,
) -> None:
    """Import modules a user named (``named_by``: the config's ``user_modules``, or ``--user_modules``), each with
    its directory in ``module_dirs`` (else ``directory``) importable, and add the components they declare to
    ``registry``. Nothing else may run code: never pass names read from a checkpoint or data file."""
    for name in names:
        module_dir = str((module_dirs or {}).get(name, directory))
        if module_dir not in sys.path:
            sys.path.insert(0, module_dir)
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"{named_by}: cannot import '{name}': {error}") from error
        except Exception as error:  # the user's own code failed while importing; --debug shows where
            raise ConfigError(f"{named_by}: importing '{name}' failed: {type(error).__name__}: {error}") from error
    try:
        registry.add_declared()
    except ValueError as error:  # a declared type_hint that is taken
        raise ConfigError(f"{named_by}: {error}") from error


def format_validation_error(
    error: ValidationError,
    schema: type[BaseModel] | None = None,
    config: dict[str, Any] | None = None,
    registry: ResolverRegistry | None = None,
    origins: KeyOrigins | None = None,
) -> str:
    """One line per error, at its dotted key; with the ``schema``, ``config`` and ``registry`` validated, an
    unknown key also gets the closest valid one (or the few valid ones); with the ``origins`` of the config, the
    default files that set the key (see ``KeyOrigins.remark``)."""
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
        origin = "" if origins is None or config is None else origins.remark(config, detail["loc"])
        lines.append(f"  {where}{message}{_input_hint(detail)}{origin}")
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


def validate_config(
    resolved: dict[str, Any], model: type[ModelT], registry: ResolverRegistry, origins: KeyOrigins | None = None
) -> ModelT:
    try:
        return registry.validate(model, resolved)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model, resolved, registry, origins)) from error


def in_schema_order(
    config: Any, schema: type[BaseModel], registry: ResolverRegistry, path: tuple[str, ...] = (), root: Any = None
) -> Any:
    """``config`` with each mapping's keys in the order of the fields of the model that validates it (a section,
    a component node, its config), where the schema says; the others keep theirs. config.yaml then reads the
    same whichever composed file set which key."""
    root = config if root is None else root
    if isinstance(config, list):
        return [in_schema_order(item, schema, registry, (*path, str(index)), root) for index, item in enumerate(config)]
    if not isinstance(config, dict):
        return config
    section = model_at(schema, path, root, registry)
    order = [info.alias or name for name, info in section.model_fields.items()] if section is not None else []
    keys = [key for key in order if key in config] + [key for key in config if key not in order]
    return {key: in_schema_order(config[key], schema, registry, (*path, str(key)), root) for key in keys}


def load_config(
    path: Path, model: type[ModelT], overrides: Sequence[str] = (), *, registry: ResolverRegistry
) -> tuple[ModelT, dict[str, Any]]:
    """Compose, override, resolve and validate against ``registry``, which gains the components that
    ``user_modules`` declare. Returns the validated model and the resolved plain dict."""
    config, resolved, _ = load_config_with_origins(path, model, overrides, registry=registry)
    return config, resolved


def load_config_with_origins(
    path: Path, model: type[ModelT], overrides: Sequence[str] = (), *, registry: ResolverRegistry
) -> tuple[ModelT, dict[str, Any], KeyOrigins]:
    """``load_config``, and where each key of the resolved config came from.

    A schema may declare ``composition_defaults``, the nodes every config gets unless a file says otherwise:
    they are the first layer of the composition, under every file.
    """
    composed = compose(Path(path), getattr(model, COMPOSITION_DEFAULTS, None))
    apply_overrides(composed, overrides)
    resolved = resolve(composed.raw, composed.origins)
    import_user_modules(resolved, Path(path).resolve().parent, registry, composed.module_dirs)
    drop_keys_of_replaced_types(resolved, model, composed.swaps, registry)
    config = validate_config(resolved, model, registry, composed.origins)
    return config, in_schema_order(resolved, model, registry), composed.origins
