"""A small config schema for tests of loading and building, independent of the full training schema."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from llm_gym.assembly import make_registry
from llm_gym.config import loading
from llm_gym.registry import Component


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: PositiveInt
    warmup_steps: NonNegativeInt = 0
    world_size: PositiveInt = 1
    rank: NonNegativeInt = 0
    name: str = "toy"


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_modules: list[str] = Field(default_factory=list)
    training: ToySettings
    optimizer: Component("optimizer")
    lr_scheduler: Component("lr_scheduler")


TOY_YAML = """
training:
  max_steps: 100
  warmup_steps: 10
optimizer:
  type_hint: AdamW
  config:
    lr: 3.0e-4
lr_scheduler:
  type_hint: LinearWarmupCosineDecay
  config:
    warmup_steps: ${training.warmup_steps}
    total_steps: ${training.max_steps}
"""


def load_config(path: Path, schema: type[BaseModel], overrides: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """``llm_gym.config.loading.load_config`` against a new registry of the built-in and declared components."""
    return loading.load_config(path, schema, overrides, registry=make_registry())


def load_config_with_origins(
    path: Path, schema: type[BaseModel], overrides: Sequence[str] = ()
) -> tuple[Any, dict[str, Any], Any]:
    """``llm_gym.config.loading.load_config_with_origins`` against a new registry, like ``load_config``."""
    return loading.load_config_with_origins(path, schema, overrides, registry=make_registry())
