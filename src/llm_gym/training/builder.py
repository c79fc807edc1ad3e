"""From a validated config to built, wired components: the only place that reads the config of a run."""

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from llm_gym.config.app import CompileScope, TrainingAppConfig, TrainingSettings
from llm_gym.data.loaders import eval_batches
from llm_gym.data.tokenizers import load_tokenizer, tokenizer_exists
from llm_gym.errors import ConfigError, MissingInputError
from llm_gym.evaluation.in_loop import EvaluationContext
from llm_gym.logging_broker import MessageBroker
from llm_gym.models.contract import LanguageModel, as_language_model, reads_document_ids
from llm_gym.optim.optimizers import apply_lr_multipliers, parameter_groups
from llm_gym.parallel.block_wrappers import apply_activation_checkpointing, compile_blocks, compile_model
from llm_gym.parallel.distributed import DistributedEnvironment
from llm_gym.parallel.strategies import FSDP2, ParallelismStrategy
from llm_gym.registry import ResolverRegistry
from llm_gym.training.hardware import available_memory
from llm_gym.training.materialise import materialise


@dataclass
class BuiltModel:
    model: nn.Module
    """The parallelized module the step runs."""
    inner: LanguageModel
    """The model itself, for its figures (FLOPs, parameter count) and generation."""


def build_parallelism(
    config: TrainingAppConfig, env: DistributedEnvironment, registry: ResolverRegistry
) -> ParallelismStrategy:
    parallelism = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    try:
        config.training.check_batch_sizes(parallelism.data_parallel_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return parallelism


def build_model(config: TrainingAppConfig, parallelism: ParallelismStrategy, registry: ResolverRegistry) -> BuiltModel:
    """Build without memory, wrap per block, shard, and initialise once with the experiment seed.

    The model is always built on the meta device, so its constructor draws nothing that would be drawn again.
    By default it is materialised and initialised before sharding, whole on every rank, so a run's initial
    weights do not depend on the number of ranks. With ``training.meta_device_init`` it is materialised
    after sharding, shard by shard: the way to train models larger than one device. Both give the same
    weights (an FSDP2 shard is drawn whole, then sliced).
    """
    settings, device = config.training, parallelism.env.device
    model = build_model_on_meta(config, registry)
    check_model_fits(model, config, parallelism)
    inner = model
    if not settings.meta_device_init:
        materialise(inner, device, config.experiment.seed)
    parallelism.apply_tensor_parallel(model)
    parallelism.apply_context_parallel(model)
    if settings.compile is CompileScope.BLOCKS:
        compile_blocks(model)
    apply_activation_checkpointing(
        model, settings.activation_checkpointing.value, settings.activation_checkpointing_every_k
    )
    if settings.compile is CompileScope.MODEL:
        compile_model(model)
    model = parallelism.parallelize(model)
    if settings.meta_device_init:
        materialise(inner, device, config.experiment.seed)
    return BuiltModel(model, inner)


def build_model_on_meta(config: TrainingAppConfig, registry: ResolverRegistry) -> LanguageModel:
    """The model's shapes without its memory, checked against the model contract (with tensor parallelism, for
    its plan too): what `validate` sizes and `run` materialises."""
    try:
        with torch.device("meta"):
            model = registry.build_component_by_config(config.model)
    except (RuntimeError, TypeError, OverflowError) as error:
        # How torch refuses a tensor size beyond 64 bits, even on the meta device.
        if "overflow" not in str(error).lower():
            raise
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"model: a tensor of this size cannot exist (beyond 2^63 bytes): {reason}") from None
    degrees = config.parallelism.config
    tensor_parallel = getattr(degrees, "tensor_parallel_degree", 1) > 1
    context_parallel = getattr(degrees, "context_parallel_degree", 1) > 1
    pipeline = getattr(degrees, "pipeline_parallel_degree", 1) > 1
    return as_language_model(
        model,
        tensor_parallel=tensor_parallel,
        context_parallel=context_parallel,
        pipeline=pipeline,
        chunked_loss=config.training.loss_chunk_tokens > 0,
    )


def shard_degree(parallelism: ParallelismStrategy) -> int:
    """Over how many ranks FSDP2 splits each parameter: ``dp_shard`` × ``cp`` (whose ranks hold the same model)."""
    if not isinstance(parallelism, FSDP2):
        return 1
    return parallelism.shard_degree * parallelism.context_parallel_degree


def check_model_fits(model: nn.Module, config: TrainingAppConfig, parallelism: ParallelismStrategy) -> None:
    """Refuse a model (on the meta device) whose weights alone cannot be allocated on the device a rank trains on.

    Weights are materialised whole on every rank, or only their shard with ``training.meta_device_init``; the
    ranks of one machine share its RAM. Optimizer state and activations come on top, so a model that passes
    may still not train: ``validate`` prints the whole estimate.
    """
    env = parallelism.env
    available = available_memory(env.device)
    if available is None:
        return
    tensors = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}.values()
    model_bytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    per_rank = model_bytes / shard_degree(parallelism) if config.training.meta_device_init else model_bytes
    sharing = env.local_world_size if env.device.type == "cpu" else 1
    if per_rank * sharing > available:
        ranks = f" × {sharing} ranks" if sharing > 1 else ""
        raise ConfigError(
            f"model: its weights alone need {per_rank / 2**30:,.2f} GiB{ranks} on {env.device.type}, more than the "
            f"{available / 2**30:,.2f} GiB available there; make the model smaller (model.config), or shard its "
            "weights over more devices (FSDP2 with training.meta_device_init: true)"
        )


def check_tokenizer(config: TrainingAppConfig, model: LanguageModel) -> str:
    """Refuse a ``data.tokenizer`` with more ids than the model embeds; say what was found.

    Training reads token ids only, so a tokenizer file absent here is not an error (``generate`` and
    ``export_hf`` need it later); one that is present must fit the model.
    """
    spec = config.data.tokenizer
    if not tokenizer_exists(spec):
        return f"data.tokenizer: {spec} is not here (generate and export_hf will need it)"
    tokenizer = load_tokenizer(spec, model.vocab_size)
    return f"data.tokenizer: {spec}, {tokenizer.vocab_size:,} ids"


def end_of_document_id(config: TrainingAppConfig, model: LanguageModel) -> int | None:
    """The token that ends each document of the packed corpus, ``data.tokenizer``'s, when ``model`` reads the
    documents of its samples (document masking, positions restarting per document); else None."""
    if not reads_document_ids(model):
        return None
    spec = config.data.tokenizer
    if not tokenizer_exists(spec):
        raise ConfigError(
            f"data.tokenizer: {spec} is not here, and the model reads the documents of packed samples "
            "(model.config.document_masking or document_positions: restart), which end at its end-of-document "
            "token; give the tokenizer the corpus was tokenized with"
        )
    return load_tokenizer(spec, model.vocab_size).eos_id


def build_evaluators(config: TrainingAppConfig, model: LanguageModel, registry: ResolverRegistry) -> list[Any]:
    """``evaluation.evaluators``, built with the run's tokenizer (which they need, so it must be here)."""
    if not config.evaluation.evaluators:
        return []
    spec = config.data.tokenizer
    if not tokenizer_exists(spec):
        raise MissingInputError(f"evaluation.evaluators need data.tokenizer to score text, and {spec} does not exist")
    context = EvaluationContext(
        tokenizer=load_tokenizer(spec, model.vocab_size),
        vocab_size=model.vocab_size,
        sequence_length=model.sequence_length,
        micro_batch_size=config.training.micro_batch_size,
    )
    return [registry.build_component_by_config(node, {"context": context}) for node in config.evaluation.evaluators]


def build_optimization(
    config: TrainingAppConfig, model: nn.Module, registry: ResolverRegistry
) -> tuple[torch.optim.Optimizer, Any]:
    optimizer_class = registry.find_entry("optimizer", config.optimizer.type_hint).component
    # Muon treats the hidden matrices apart; the other optimizers need not know which they are.
    mark_hidden_matrices = getattr(optimizer_class, "treats_hidden_matrices_apart", False)
    groups = parameter_groups(model, config.parameter_groups, mark_hidden_matrices)
    optimizer = registry.build_component_by_config(config.optimizer, extra_kwargs={"params": groups})
    apply_lr_multipliers(optimizer)
    lr_scheduler = registry.build_component_by_config(config.lr_scheduler, extra_kwargs={"optimizer": optimizer})
    return optimizer, lr_scheduler


def check_train_dataset_size(num_samples: int, training: TrainingSettings, data_parallel_size: int) -> None:
    samples_per_step = training.samples_per_step(data_parallel_size)
    if num_samples < samples_per_step:
        raise ConfigError(
            f"data.train_dataset has {num_samples:,} samples, fewer than one global batch ({samples_per_step:,}): "
            "every step would repeat samples; give it more data, or shorten training.sequence_length or the batch"
        )


@dataclass
class BuiltData:
    train_loader: Any
    eval_splits: dict[str, Any]


def build_data(
    config: TrainingAppConfig,
    parallelism: ParallelismStrategy,
    registry: ResolverRegistry,
    end_of_document: int | None = None,
) -> BuiltData:
    """With ``end_of_document`` (see ``end_of_document_id``), the collator is given it as ``end_of_document_id``
    and its batches carry ``document_ids``."""
    data = config.data
    dp_rank, dp_size = parallelism.data_parallel_rank, parallelism.data_parallel_size
    micro_batch_size = config.training.micro_batch_size
    train_dataset = registry.build_component_by_config(data.train_dataset)
    check_train_dataset_size(len(train_dataset), config.training, dp_size)
    sampler = registry.build_component_by_config(
        data.sampler,
        extra_kwargs={"dataset_length": len(train_dataset), "dp_rank": dp_rank, "dp_world_size": dp_size},
    )
    documents = {} if end_of_document is None else {"end_of_document_id": end_of_document}
    collator = registry.build_component_by_config(data.collator, extra_kwargs=documents)
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
            micro_batch_size,
            dp_rank,
            dp_size,
            config.training.eval_samples,
        )
    return BuiltData(train_loader, eval_splits)


def build_broker(
    config: TrainingAppConfig,
    resolved: dict,
    is_main_process: bool,
    resume_step: int | None,
    registry: ResolverRegistry,
) -> MessageBroker:
    """Loggers run on rank 0 only; other ranks publish into a broker without subscribers."""
    broker = MessageBroker()
    if is_main_process:
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
