"""One config composed from YAML files: each file's ``defaults:`` list, merged in order, then its own keys.

    defaults:                            # paths relative to this file, or absolute
      - common/pretraining.yaml
      - model_sections/tiny_cpu.yaml     # may say ${training.sequence_length}: it resolves on the whole
    training:
      max_steps: 50

Each default may list defaults of its own; they merge first, depth first. Two mappings merge key by key;
anything else (a scalar, a list) is replaced whole by the later value. Nothing is resolved here: interpolations
resolve on the merged whole, after the command-line overrides (``loading.py``). Two records follow the merge:
the component nodes a later layer gave another type_hint (``TypeHintSwaps``: the old type's keys are dropped
once the config is resolved), and the layer that set each key (``KeyOrigins``).
"""

import copy
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_gym.errors import ConfigError
from llm_gym.registry.component import value_at

DEFAULTS_KEY = "defaults"
USER_MODULES_KEY = "user_modules"

# Where a key came from, besides a file.
SCHEMA_DEFAULTS = "schema defaults"
COMMAND_LINE = "command line"

KeyPath = tuple[str, ...]


def omegaconf_message(error: OmegaConfBaseException) -> str:
    """OmegaConf's own first line, without the wrapper text it adds around a resolver's exception."""
    message = str(error).splitlines()[0]
    message = re.sub(r"^\w+ raised while resolving interpolation: ", "", message)
    return message[1:-1] if len(message) > 1 and message[0] == message[-1] == '"' else message


def yaml_problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or str(error).splitlines()[0]


# A config holds a few hundred values. Aliases (*name) can make a small file expand into billions of them (the
# "billion laughs" bomb), which OmegaConf would build one by one: the expanded size is counted on the parsed
# node graph first, in time linear in the file, with the limits of omegaconf 2.4 (which older releases lack).
MAX_YAML_VALUES = 10_000
_MAX_ALIAS_EXPANSION, _ALIAS_EXPANSION_FLOOR = 100, 1_000
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YAMLExpansionError(Exception):
    pass


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def check_yaml_expansion(text: str) -> None:
    """Raise ``YAMLExpansionError`` saying what was refused when aliases expand ``text`` beyond the limits."""
    loader = _YAML_LOADER(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    if root is None:
        return
    expanded: dict[int, int] = {}  # id(node) → values it stands for, aliases expanded
    unique, stack, on_path = 0, [(root, False)], set()
    while stack:  # depth first, without recursion: a deeply nested file must not overflow Python's stack
        node, children_done = stack.pop()
        if children_done:
            on_path.discard(id(node))
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in _children(node))
            continue
        if id(node) in expanded:
            continue
        if id(node) in on_path:
            mark = node.start_mark
            raise YAMLExpansionError(
                f"the value at line {mark.line + 1}, column {mark.column + 1} contains an alias of itself "
                "(a recursive alias)"
            )
        unique += 1
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
    total = expanded[id(root)]
    if unique > MAX_YAML_VALUES:
        raise YAMLExpansionError(f"it holds {unique:,} values, more than the {MAX_YAML_VALUES:,} a config may hold")
    limit = (
        f"more than the {MAX_YAML_VALUES:,} a config may hold"
        if total > MAX_YAML_VALUES
        else f"over {_MAX_ALIAS_EXPANSION} times as many as written"
        if total > _ALIAS_EXPANSION_FLOOR and total > _MAX_ALIAS_EXPANSION * unique
        else None
    )
    if limit:
        raise YAMLExpansionError(
            f"it is an alias bomb (billion laughs): its aliases (*name) expand {unique:,} values to {total:,}, {limit}"
        )


def read_config_file(path: Path) -> DictConfig:
    """Read the YAML as it is written; nothing is resolved yet."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        check_yaml_expansion(text)
        raw = OmegaConf.load(io.StringIO(text))
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:  # a directory, no permission, an I/O error
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from error
    except YAMLExpansionError as error:
        raise ConfigError(f"{path} is refused: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error in {path}{where}: {yaml_problem(error)}") from error
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "<root>"
        raise ConfigError(f"{key}: invalid interpolation in {path}: {omegaconf_message(error)}") from error
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level, not a list")
    return raw


@dataclass
class TypeHintSwap:
    """A later layer (a composed file, an override) changed the type_hint of the node at ``node_path``.

    The node's config was written for the old type, so the keys the new type's config model does not accept
    are dropped (see ``loading.drop_keys_of_replaced_types``); ``set_after`` holds the config keys set with or
    after the change, which stay whatever they are, so a mistake among them is still reported.
    """

    node_path: KeyPath
    set_after: set[str] = field(default_factory=set)

    def note_set(self, parts: KeyPath, value: Any) -> None:
        """``value`` was set at ``parts``: an override's value at its key, or a file's whole tree at ``()``."""
        config_path = (*self.node_path, "config")
        # A mapping set above the node's config (`optimizer={...}`, a file) reaches the config through its keys.
        while len(parts) < len(config_path) and parts == config_path[: len(parts)]:
            if not isinstance(value, Mapping):
                return
            value, parts = value.get(config_path[len(parts)]), config_path[: len(parts) + 1]
        if parts[: len(config_path)] != config_path:
            return
        if len(parts) > len(config_path):
            self.set_after.add(parts[len(config_path)])
        elif isinstance(value, Mapping):  # the whole config given at once: `optimizer.config={momentum: 0.9}`
            self.set_after.update(str(name) for name in value)


class TypeHintSwaps:
    """The swaps of one config, across its layers: composed files first, then the command-line overrides."""

    def __init__(self) -> None:
        self._by_node: dict[KeyPath, TypeHintSwap] = {}

    def type_changed(self, node_path: KeyPath) -> None:
        # Keys set before this change were written for an earlier type: only those set from now on are kept.
        self._by_node[node_path] = TypeHintSwap(node_path)

    def note_set(self, parts: KeyPath, value: Any) -> None:
        for swap in self._by_node.values():
            swap.note_set(parts, value)

    def __iter__(self) -> Iterator[TypeHintSwap]:
        return iter(self._by_node.values())


def _leaf_paths(value: Any, at: KeyPath, into_lists: bool = False) -> Iterator[KeyPath]:
    """The paths of ``value``'s scalars, lists (their items too with ``into_lists``) and empty mappings."""
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from _leaf_paths(child, (*at, str(key)), into_lists)
    elif into_lists and isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaf_paths(item, (*at, str(index)), into_lists)
    elif at:
        yield at


class KeyOrigins:
    """Which layer set each key: the last one that set the key itself, or a list or mapping holding it (the value
    an interpolation resolves to belongs to the key that holds the interpolation)."""

    def __init__(self, given: str) -> None:
        self.given = given
        """The label of the file given, which, like the command line, a message need not name."""
        self._layers: list[tuple[str, set[KeyPath]]] = []

    def record(self, label: str, value: Any, at: KeyPath = ()) -> None:
        """``label`` (a file, the command line) set ``value`` at ``at``; a list is replaced whole, so it is one key."""
        self._layers.append((label, set(_leaf_paths(value, at))))

    def of(self, path: Sequence[str]) -> str | None:
        prefixes = {tuple(path[:length]) for length in range(1, len(path) + 1)}
        return next((label for label, paths in reversed(self._layers) if paths & prefixes), None)

    def remark(self, config: Mapping[str, Any] | None, path: Sequence[Any]) -> str:
        """`` [from common/pretraining.yaml]`` for a message about the key at ``path`` of ``config`` (None: the
        key alone), naming the layers that set it (its items, for a list) when one of them is neither the file
        given nor the command line, so that a mistake in a default file can be found. A message about a whole
        section names its keys itself: it gets no remark."""
        path = tuple(str(part) for part in path)
        value = value_at(config, path) if config is not None else None
        if not path or (isinstance(value, Mapping) and value):
            return ""
        labels = {self.of(leaf) for leaf in _leaf_paths(value, path, into_lists=True)} - {None}
        if labels <= {self.given, COMMAND_LINE}:
            return ""
        in_order = dict.fromkeys(label for label, _ in self._layers if label in labels)
        return f" [from {', '.join(in_order)}]"

    def lines(self, resolved: Mapping[str, Any]) -> list[str]:
        """``key: origin`` for each top-level key, or for its keys where they came from more than one layer,
        down to the shallowest keys whose every value came from one layer."""
        lines: list[str] = []

        def describe(value: Any, path: KeyPath) -> None:
            labels = {self.of(leaf) or "?" for leaf in _leaf_paths(value, path, into_lists=True)}
            if len(labels) <= 1 or not isinstance(value, (Mapping, list)):
                lines.append(f"{'.'.join(path)}: {labels.pop() if labels else '?'}")
                return
            children = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, child in children:
                describe(child, (*path, str(key)))

        for key, value in resolved.items():
            describe(value, (str(key),))
        return lines


@dataclass
class ComposedConfig:
    raw: DictConfig
    """The merged tree, nothing resolved; the command-line overrides apply to it next."""
    files: list[Path]
    """Every file read, in merge order: each one's defaults before it, the file given last."""
    swaps: TypeHintSwaps
    origins: KeyOrigins
    module_dirs: dict[str, Path]
    """The directory each of ``user_modules`` is imported from: that of the first file (in merge order) to list it."""


def compose(path: Path, schema_defaults: Mapping[str, Any] | None = None) -> ComposedConfig:
    """The file at ``path`` merged over its defaults, all of it over ``schema_defaults`` (the nodes a schema
    gives every config, written as a file would write them)."""
    path = Path(path)
    layers: list[tuple[Path, dict[str, Any]]] = []
    _collect(path, _read_layer(path), [path], layers)
    merged: dict[str, Any] = {}
    swaps, origins, module_dirs = TypeHintSwaps(), KeyOrigins(str(path)), {}
    if schema_defaults:
        _merge_layer(merged, copy.deepcopy(dict(schema_defaults)), swaps)
        origins.record(SCHEMA_DEFAULTS, schema_defaults)
    for file, layer in layers:
        modules = layer.get(USER_MODULES_KEY)
        if isinstance(modules, list):
            for name in modules:
                if isinstance(name, str):
                    module_dirs.setdefault(name, file.parent)
            listed = merged.get(USER_MODULES_KEY)
            if isinstance(listed, list):  # they accumulate: each file needs the modules it lists
                layer[USER_MODULES_KEY] = [*listed, *(name for name in modules if name not in listed)]
        _merge_layer(merged, layer, swaps)
        origins.record(str(file), layer)
    return ComposedConfig(OmegaConf.create(merged), [file for file, _ in layers], swaps, origins, module_dirs)


def _read_layer(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(read_config_file(path), resolve=False)


def _collect(path: Path, layer: dict[str, Any], chain: list[Path], layers: list[tuple[Path, dict[str, Any]]]) -> None:
    """Append the defaults of the file at ``path`` (each after its own) to ``layers``, then the file itself.
    ``chain`` holds the files that include this one, down to it."""
    defaults = _defaults_of(path, layer.pop(DEFAULTS_KEY)) if DEFAULTS_KEY in layer else []
    for index, entry in enumerate(defaults):
        where = f"{path}: {DEFAULTS_KEY}[{index}]"
        target = Path(os.path.normpath(Path(entry) if Path(entry).is_absolute() else path.parent / entry))
        if any(target.resolve() == including.resolve() for including in chain):
            cycle = " → ".join(str(file) for file in [*chain, target])
            raise ConfigError(f"{where}: the defaults include each other in a cycle: {cycle}")
        try:
            default = _read_layer(target)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
        _collect(target, default, [*chain, target], layers)
    layers.append((path, layer))


def _defaults_of(path: Path, defaults: Any) -> list[str]:
    if not isinstance(defaults, list):
        raise ConfigError(
            f"{path}: {DEFAULTS_KEY} must be a list of YAML files, e.g. {DEFAULTS_KEY}: [model_sections/tiny_cpu.yaml]"
            f" (got {defaults!r})"
        )
    for index, entry in enumerate(defaults):
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{path}: {DEFAULTS_KEY}[{index}] must be the path of a YAML file, not {entry!r}")
        if "${" in entry:
            raise ConfigError(f"{path}: {DEFAULTS_KEY}[{index}]: a path in defaults is not interpolated ({entry})")
    return defaults


def _merge_layer(merged: dict[str, Any], layer: dict[str, Any], swaps: TypeHintSwaps) -> None:
    _merge(merged, layer, (), swaps)
    swaps.note_set((), layer)


def _merge(into: dict[str, Any], layer: Mapping[str, Any], path: KeyPath, swaps: TypeHintSwaps) -> None:
    """Merge ``layer`` into ``into`` in place: mappings key by key, anything else replaced whole."""
    if "type_hint" in layer and "type_hint" in into and layer["type_hint"] != into["type_hint"]:
        swaps.type_changed(path)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, (*path, str(key)), swaps)
        else:
            into[key] = value
