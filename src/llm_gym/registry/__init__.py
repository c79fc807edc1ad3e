"""The registry mechanism: which components a config can name, and how a validated node becomes an object.

It imports no component. The built-in ones are listed in ``llm_gym.assembly``, whose ``make_registry()``
gives a registry holding them; validation receives a registry in pydantic's validation context
(``registry.validate(Model, data)``), never from a global.

Declare a component in your own module (no edit of llm_gym needed)::

    from llm_gym.registry import register_component

    @register_component("lr_scheduler", "MySchedule", config_model=MyScheduleConfig)
    class MySchedule(torch.optim.lr_scheduler.LRScheduler): ...

and list that module under ``user_modules`` at the top of the YAML: loading the config imports it and adds
what it declared to the registry the run validates and builds with.
"""

from llm_gym.registry.component import Component, ComponentNode
from llm_gym.registry.registry import (
    ComponentEntry,
    ComponentFactory,
    DeclaredComponent,
    ResolverRegistry,
    config_model_from_signature,
    register_component,
)

__all__ = [
    "Component",
    "ComponentEntry",
    "ComponentFactory",
    "ComponentNode",
    "DeclaredComponent",
    "ResolverRegistry",
    "config_model_from_signature",
    "register_component",
]
