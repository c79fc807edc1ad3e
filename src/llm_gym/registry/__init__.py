"""The process-wide component registry and the public API for registering your own components.

Register a class from your own module (no edit of llm_gym needed)::

    from llm_gym.registry import register_component

    @register_component("lr_scheduler", "MySchedule", config_model=MyScheduleConfig)
    class MySchedule(torch.optim.lr_scheduler.LRScheduler): ...

and list that module under ``user_modules`` at the top of the YAML, so it is imported before validation.
"""

from collections.abc import Callable, Iterable

from pydantic import BaseModel

from llm_gym.registry.registry import (
    ComponentEntry,
    ComponentFactory,
    ResolverRegistry,
    config_model_from_signature,
)

_registry: ResolverRegistry | None = None


def get_registry() -> ResolverRegistry:
    """The registry holding every built-in component plus whatever users registered."""
    global _registry
    if _registry is None:
        from llm_gym.assembly import register_builtin_components

        _registry = ResolverRegistry()
        register_builtin_components(_registry)
    return _registry


def register_component(
    register_key: str,
    type_hint: str | None = None,
    config_model: type[BaseModel] | None = None,
    injected: Iterable[str] = (),
) -> Callable[[type], type]:
    """Class decorator registering a user component in the process-wide registry."""

    def decorate(component: type) -> type:
        get_registry().register_component(
            register_key, type_hint or component.__name__, component, config_model, injected
        )
        return component

    return decorate


__all__ = [
    "ComponentEntry",
    "ComponentFactory",
    "ResolverRegistry",
    "config_model_from_signature",
    "get_registry",
    "register_component",
]
