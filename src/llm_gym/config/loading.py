"""YAML → resolved dict → validated pydantic model, with errors a user can act on.

Order matters: command-line overrides are merged into the raw YAML *before* interpolations resolve, so
``training.global_batch_size=64`` also changes every ``${training.global_batch_size}``.
"""

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from llm_gym.errors import ConfigError

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
    if not OmegaConf.has_resolver("dist"):
        OmegaConf.register_new_resolver("dist", _dist_resolver)


def load_raw_config(path: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read the YAML and merge ``dotted.key=value`` overrides; nothing is resolved yet."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {path}{where}: {problem}") from error
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot load {path}: {error}") from error
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level, not a list")
    return OmegaConf.merge(raw, parse_overrides(overrides)) if overrides else raw


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override '{override}': expected dotted.key=value, e.g. training.max_steps=100")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad override: {error}") from error


def resolve(raw: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation; a failure names the key whose value could not be resolved."""
    register_resolvers()
    try:
        resolved = OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0]
        raise ConfigError(f"{key}: cannot resolve interpolation: {message}" if key else message) from error
    return resolved


def import_user_modules(config: dict[str, Any], config_dir: Path) -> None:
    """Import the modules listed under ``user_modules`` so their components are registered before validation.

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


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for detail in error.errors():
        location = ""
        for part in detail["loc"]:
            location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        lines.append(f"  {location or '<root>'}: {detail['msg']}" + _input_hint(detail))
    count = len(lines)
    return f"invalid config ({count} error{'s' if count > 1 else ''}):\n" + "\n".join(lines)


def _input_hint(detail: dict[str, Any]) -> str:
    if detail["type"] in ("missing", "unknown_type_hint", "component_node", "missing_type_hint"):
        return ""
    shown = repr(detail.get("input"))
    return f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def validate_config(resolved: dict[str, Any], model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate(resolved)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from error


def load_config(path: Path, model: type[ModelT], overrides: Sequence[str] = ()) -> tuple[ModelT, dict[str, Any]]:
    """Load, override, resolve and validate. Returns the validated model and the resolved plain dict."""
    resolved = resolve(load_raw_config(path, overrides))
    import_user_modules(resolved, Path(path).resolve().parent)
    return validate_config(resolved, model), resolved
