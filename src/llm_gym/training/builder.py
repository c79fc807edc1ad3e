"""From a validated config to built, wired components: the only place that reads the config of a run."""

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from llm_gym.config.app import TrainingAppConfig
from llm_gym.data.loaders import eval_batches
from llm_gym.data.tokenizers import load_tokenizer, tokenizer_exists
from llm_gym.errors import ConfigError
from llm_gym.evaluation.in_loop import EvaluationContext
from llm_gym.logging_broker import MessageBroker
from llm_gym.parallel.block_wrappers import apply_activation_checkpointing, compile_blocks
from llm_gym.parallel.distributed import DistributedEnvironment
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.registry import ResolverRegistry, get_registry
from llm_gym.training.optimizers import weight_decay_parameter_groups
from llm_gym.training.step import BatchKeys


@dataclass
class BuiltModel:
    model: nn.Module
    """The parallelized module the step runs."""
    inner: nn.Module
    """The model itself, for its figures (FLOPs, parameter count) and generation."""


def build_parallelism(config: TrainingAppConfig, env: DistributedEnvironment) -> ParallelismStrategy:
    parallelism = get_registry().build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    try:
        config.training.check_batch_sizes(parallelism.data_parallel_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return parallelism


def build_model(
    config: TrainingAppConfig, parallelism: ParallelismStrategy, registry: ResolverRegistry | None = None
) -> BuiltModel:
    """Build without memory, wrap per block, shard, and initialise once with the experiment seed.

    The model is always built on the meta device, so its constructor draws nothing that would be drawn again.
    By default it is materialised and initialised before sharding, whole on every rank, so a run's initial
    weights do not depend on the number of ranks. With ``training.meta_device_init`` it is materialised
    after sharding, shard by shard: the way to train models larger than one device. Both give the same
    weights (an FSDP2 shard is drawn whole, then sliced).
    """
    registry = registry or get_registry()
    settings, device = config.training, parallelism.env.device
    with torch.device("meta"):
        model = registry.build_component_by_config(config.model)
    if not callable(getattr(model, "init_weights", None)):
        raise ConfigError(
            f"model: {type(model).__name__} has no init_weights(); llm_gym builds models on the meta device and "
            "calls init_weights() to fill every parameter and buffer (docs/configuration.md, Your own components)"
        )
    inner = model
    if not settings.meta_device_init:
        _materialise(inner, device, config.experiment.seed)
    apply_activation_checkpointing(
        model, settings.activation_checkpointing.value, settings.activation_checkpointing_every_k
    )
    if settings.compile:
        compile_blocks(model)
    model = parallelism.parallelize(model)
    if settings.meta_device_init:
        _materialise(inner, device, config.experiment.seed)
    return BuiltModel(model, inner)


def _materialise(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a meta-device model on ``device`` and draw its weights from ``seed`` (``init_weights``)."""
    model.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_weights()


def check_tokenizer(config: TrainingAppConfig, model: nn.Module) -> str:
    """Refuse a ``data.tokenizer`` with more ids than the model embeds; say what was found.

    Training reads token ids only, so a tokenizer file absent here is not an error (``generate`` and
    ``export_hf`` need it later); one that is present must fit the model.
    """
    spec = config.data.tokenizer
    if not tokenizer_exists(spec):
        return f"data.tokenizer: {spec} is not here (generate and export_hf will need it)"
    tokenizer = load_tokenizer(spec, getattr(model, "vocab_size", None))
    return f"data.tokenizer: {spec}, {tokenizer.vocab_size:,} ids"


def build_evaluators(config: TrainingAppConfig, model: nn.Module) -> list[Any]:
    """``evaluation.evaluators``, built with the run's tokenizer (which they need, so it must be here)."""
    if not config.evaluation.evaluators:
        return []
    spec = config.data.tokenizer
    if not tokenizer_exists(spec):
        raise ConfigError(f"evaluation.evaluators need data.tokenizer to score text, and {spec} does not exist")
    context = EvaluationContext(
        tokenizer=load_tokenizer(spec, model.vocab_size),
        vocab_size=model.vocab_size,
        sequence_length=model.sequence_length,
        micro_batch_size=config.training.micro_batch_size,
    )
    registry = get_registry()
    return [registry.build_component_by_config(node, {"context": context}) for node in config.evaluation.evaluators]


def build_optimization(config: TrainingAppConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    registry = get_registry()
    optimizer = registry.build_component_by_config(
        config.optimizer, extra_kwargs={"params": weight_decay_parameter_groups(model)}
    )
    lr_scheduler = registry.build_component_by_config(config.lr_scheduler, extra_kwargs={"optimizer": optimizer})
    return optimizer, lr_scheduler


@dataclass
class BuiltData:
    train_loader: Any
    eval_splits: dict[str, Any]
    batch_keys: BatchKeys


def build_data(config: TrainingAppConfig, parallelism: ParallelismStrategy) -> BuiltData:
    registry, data = get_registry(), config.data
    dp_rank, dp_size = parallelism.data_parallel_rank, parallelism.data_parallel_size
    micro_batch_size = config.training.micro_batch_size
    train_dataset = registry.build_component_by_config(data.train_dataset)
    sampler = registry.build_component_by_config(
        data.sampler,
        extra_kwargs={"dataset_length": len(train_dataset), "dp_rank": dp_rank, "dp_world_size": dp_size},
    )
    collator = registry.build_component_by_config(data.collator)
    train_loader = registry.build_component_by_config(
        data.dataloader,
        extra_kwargs={
            "dataset": train_dataset,
            "sampler": sampler,
            "collator": collator,
            "micro_batch_size": micro_batch_size,
        },
    )
    eval_splits = {}
    for split, node in data.eval_datasets.items():
        dataset = registry.build_component_by_config(node)
        eval_splits[split] = partial(
            eval_batches,
            dataset,
            collator,
            collator.target_key,
            micro_batch_size,
            dp_rank,
            dp_size,
            config.training.eval_samples,
        )
    return BuiltData(train_loader, eval_splits, BatchKeys(collator.input_key, collator.target_key))


def build_broker(
    config: TrainingAppConfig, resolved: dict, is_main_process: bool, resume_step: int | None
) -> MessageBroker:
    """Loggers run on rank 0 only; other ranks publish into a broker without subscribers."""
    broker = MessageBroker()
    if is_main_process:
        registry = get_registry()
        for node in config.loggers:
            broker.add_subscriber(
                registry.build_component_by_config(
                    node,
                    extra_kwargs={
                        "experiment_dir": config.experiment.output_dir,
                        "resolved_config": resolved,
                        "resume_step": resume_step,
                    },
                )
            )
    return broker
