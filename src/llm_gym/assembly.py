"""Every component llm_gym ships, by register key, and the registry a run validates and builds with.

The one module that imports every component table: it sits above the packages it lists (data, models,
parallel, logging_broker, optim, checkpointing) and below those that run them (training, inference, cli).
Later concerns add their tables here.
"""

from llm_gym.checkpointing.strategies import CHECKPOINT_STRATEGIES
from llm_gym.data.collators import COLLATORS
from llm_gym.data.datasets import DATASETS
from llm_gym.data.loaders import DATALOADERS
from llm_gym.data.samplers import SAMPLERS
from llm_gym.evaluation.in_loop import EVALUATORS
from llm_gym.logging_broker.loggers import LOGGERS
from llm_gym.models.attention import ATTENTION_KERNELS
from llm_gym.models.decoder import MODELS
from llm_gym.models.initialization import WEIGHT_INITS
from llm_gym.models.mlp import MLPS
from llm_gym.models.norms import NORMS
from llm_gym.optim.optimizers import OPTIMIZERS
from llm_gym.optim.schedulers import SCHEDULERS
from llm_gym.parallel.strategies import PARALLELISM
from llm_gym.registry import ResolverRegistry

BUILTIN_COMPONENTS = {
    "optimizer": OPTIMIZERS,
    "lr_scheduler": SCHEDULERS,
    "parallelism": PARALLELISM,
    "logger": LOGGERS,
    "checkpoint_strategy": CHECKPOINT_STRATEGIES,
    "model": MODELS,
    "norm": NORMS,
    "attention": ATTENTION_KERNELS,
    "mlp": MLPS,
    "init": WEIGHT_INITS,
    "dataset": DATASETS,
    "sampler": SAMPLERS,
    "collator": COLLATORS,
    "dataloader": DATALOADERS,
    "evaluator": EVALUATORS,
}


def make_registry() -> ResolverRegistry:
    """A new registry holding the built-in components and those declared with ``register_component`` so far."""
    registry = ResolverRegistry()
    for register_key, table in BUILTIN_COMPONENTS.items():
        for type_hint, (component, config_model) in table.items():
            registry.register_component(register_key, type_hint, component, config_model)
    registry.add_declared()
    return registry
