"""What `llm_gym validate` prints after the resolved config: the figures a researcher checks first.

Validation builds what it can without a process group or the training data: the parallelism strategy
(mesh degrees), the model on the meta device (shapes, no memory), optimizer and schedule over it, and
each dataset when its files are present here.
"""

from collections.abc import Iterator
from fnmatch import fnmatch

import torch
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from llm_gym.config.app import ActivationCheckpointing, TrainingAppConfig, TrainingSettings
from llm_gym.data.tokenizers import tokenizer_exists
from llm_gym.errors import MissingInputError, UserError
from llm_gym.models.contract import LanguageModel, reads_document_ids
from llm_gym.models.flops import describe_model, num_parameters
from llm_gym.optim.optimizers import Muon
from llm_gym.parallel.distributed import DistributedEnvironment
from llm_gym.parallel.layouts import Layout, ModelFigures, StepFigures, memory
from llm_gym.parallel.pipeline import stages_of_rank
from llm_gym.parallel.strategies import DTYPES, FSDP2, ParallelismStrategy, PipelineSchedule
from llm_gym.registry import ResolverRegistry
from llm_gym.training.builder import (
    build_evaluators,
    build_model_on_meta,
    build_optimization,
    check_model_fits,
    check_tokenizer,
    check_train_dataset_size,
    end_of_document_id,
    shard_degree,
)

GIB = 2**30


def describe_config(config: TrainingAppConfig, world_size: int, registry: ResolverRegistry) -> Iterator[str]:
    training = config.training
    env = DistributedEnvironment(0, 0, world_size, world_size, planned_device(training.device))
    parallelism = registry.build_component_by_config(config.parallelism, extra_kwargs={"env": env})
    try:
        training.check_batch_sizes(parallelism.data_parallel_size)
    except ValueError as error:
        raise UserError(str(error)) from error
    yield (
        f"world size: {world_size} on {env.device.type} ({type(parallelism).__name__}, "
        f"{_shard_description(parallelism)}; plan for another device with training.device=cuda|cpu)"
    )
    if parallelism.model_parallel_degree > 1:
        yield describe_mesh(parallelism)
    yield describe_global_batch(training, parallelism.data_parallel_size)
    model = build_model_on_meta(config, registry)
    # The model's plan, made here as run makes it: a model that cannot be split so is refused now.
    plan = parallelism.tensor_parallel_plan(model)
    # Cut as run cuts it (every stage, as every rank would): a model that cannot be cut so is refused now.
    stages_by_rank = _pipeline_stages_by_rank(model, parallelism)
    parallelism.apply_context_parallel(model)
    check_model_fits(model, config, parallelism)
    optimizer, _ = build_optimization(config, model, registry)
    yield from describe_model(model, training.sequence_length)
    if parallelism.pipeline_parallel_degree > 1:
        yield _describe_pipeline(parallelism, stages_by_rank, training)
    per_rank = max(parameters_per_rank(stages, plan, parallelism) for stages in stages_by_rank)
    if parallelism.model_parallel_degree > 1:
        splits = [
            f"split by the model's tensor-parallel plan over {parallelism.tensor_parallel_degree} ranks"
            if parallelism.tensor_parallel_degree > 1
            else "",
            "on the rank with the largest pipeline stages" if parallelism.pipeline_parallel_degree > 1 else "",
            f"sharded over {shard_degree(parallelism)}",
        ]
        yield (
            f"parameters per rank: {per_rank:,.0f} of {num_parameters(model):,} ("
            + ", ".join(split for split in splits if split)
            + ")"
        )
    if parallelism.context_parallel_degree > 1:
        degree = parallelism.context_parallel_degree
        yield (
            f"context parallel: each rank holds {training.sequence_length // degree:,} of the "
            f"{training.sequence_length:,} positions of every sequence, attends over all of them with 1/{degree} "
            "of the heads (4 all-to-alls per layer)"
        )
    yield from estimate_memory(model, config, parallelism, optimizer, per_rank)
    yield check_tokenizer(config, model)
    if reads_document_ids(model):
        yield _describe_documents(config, model)
    yield from _check_datasets(config, parallelism.data_parallel_size, registry)
    yield from _check_evaluators(config, model, registry)


def _describe_documents(config: TrainingAppConfig, model: LanguageModel) -> str:
    # Planning on another machine needs no tokenizer file; run does (end_of_document_id refuses its absence).
    if not tokenizer_exists(config.data.tokenizer):
        return (
            "documents: the model reads the documents of packed samples; data.tokenizer is not here to say which "
            "token ends them, and run will need it"
        )
    end_of_document = end_of_document_id(config, model)
    return f"documents: the model reads the documents of packed samples, which end at token id {end_of_document}"


def describe_mesh(parallelism: ParallelismStrategy) -> str:
    dims = " × ".join(f"{name} {degree}" for name, degree in parallelism.mesh_shape().items())
    return f"device mesh (outermost first): {dims}"


def describe_global_batch(training: TrainingSettings, data_parallel_size: int) -> str:
    samples = training.samples_per_step(data_parallel_size)
    return (
        f"global batch: {samples} samples ({training.micro_batch_size} micro batch × "
        f"{training.gradient_accumulation_steps} accumulation × {data_parallel_size} data-parallel) × "
        f"{training.sequence_length} tokens = {samples * training.sequence_length:,} tokens per step"
    )


def planned_device(requested: str) -> torch.device:
    cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def _shard_description(parallelism: ParallelismStrategy) -> str:
    degree = shard_degree(parallelism)
    return f"parameters sharded over {degree} ranks" if degree > 1 else "parameters replicated"


def _pipeline_stages_by_rank(model: LanguageModel, parallelism: ParallelismStrategy) -> list[list[nn.Module]]:
    """The modules each pipeline rank holds, in rank order: the whole model on one rank without a pipeline."""
    if parallelism.pipeline_parallel_degree == 1:
        return [[model]]
    parallelism.pipeline_holders(model)  # refuses a layer shared by two stages of one rank
    stages = parallelism.pipeline_stages(model, every_stage=True)
    degree, per_rank = parallelism.pipeline_parallel_degree, parallelism.pipeline_stages_per_rank
    schedule = parallelism.pipeline_schedule.value
    return [[stages[index] for index in stages_of_rank(rank, degree, per_rank, schedule)] for rank in range(degree)]


def _describe_pipeline(
    parallelism: ParallelismStrategy, stages_by_rank: list[list[nn.Module]], training: TrainingSettings
) -> str:
    def blocks(stage: nn.Module) -> str:
        indices = [int(index) for index in stage.blocks]
        return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else str(indices[0])

    ranks = "; ".join(
        f"pp rank {rank}: blocks " + ", ".join(blocks(stage) for stage in stages)
        for rank, stages in enumerate(stages_by_rank)
    )
    return (
        f"pipeline: {parallelism.pipeline_parallel_degree * parallelism.pipeline_stages_per_rank} stages, "
        f"{parallelism.pipeline_schedule.value} schedule over {training.gradient_accumulation_steps} microbatches "
        f"(training.gradient_accumulation_steps); {ranks}"
    )


def parameters_per_rank(
    modules: list[nn.Module], plan: dict[str, ParallelStyle], parallelism: ParallelismStrategy
) -> float:
    """Elements of the parameters one rank holds (those of ``modules``: the model, or its pipeline stages):
    split by the tensor-parallel plan's column- and row-wise layers (a row-wise layer's bias stays whole), then
    sharded by FSDP2."""
    degree = parallelism.tensor_parallel_degree
    named = {id(parameter): (name, parameter) for module in modules for name, parameter in module.named_parameters()}
    total = sum(
        parameter.numel() // degree if _split_by_plan(name, plan) else parameter.numel()
        for name, parameter in named.values()
    )
    return total / shard_degree(parallelism)


def _split_by_plan(parameter_name: str, plan: dict[str, ParallelStyle]) -> bool:
    """Whether the tensor-parallel plan splits this parameter: a column-wise layer's, or a row-wise one's weight."""
    module_name, _, name = parameter_name.rpartition(".")
    style = next((style for key, style in plan.items() if _names(key, module_name)), None)
    return isinstance(style, ColwiseParallel) or (isinstance(style, RowwiseParallel) and name != "bias")


def model_figures(model: LanguageModel, plan: dict[str, ParallelStyle]) -> ModelFigures:
    """The shapes ``llm_gym.parallel.layouts`` computes with; ``plan`` (any degree's) says what tensor parallelism
    leaves whole."""
    whole = {True: 0, False: 0}  # in a block, outside the blocks
    for name, parameter in model.named_parameters():
        if not _split_by_plan(name, plan):
            whole[name.startswith("blocks.")] += parameter.numel()
    vocabulary_matrices = sum(1 for parameter in model.parameters() if parameter.shape == (model.vocab_size, model.dim))
    return ModelFigures(
        n_layer=model.n_layer,
        dim=model.dim,
        n_head=model.n_head,
        # Optional members: a model without grouped key/value heads has as many as query heads.
        n_head_kv=getattr(model, "n_head_kv", model.n_head),
        vocab_size=model.vocab_size,
        parameters=num_parameters(model),
        block_parameters=num_parameters(model.blocks[0]),
        block_whole_under_tensor_parallel=whole[True] // model.n_layer,
        outer_whole_under_tensor_parallel=whole[False],
        tied_embeddings=vocabulary_matrices == 1,
        learned_positions=num_parameters(model, exclude_position_embeddings=True) != num_parameters(model),
    )


def step_figures(config: TrainingAppConfig, parallelism: ParallelismStrategy, state_tensors: float) -> StepFigures:
    training = config.training
    every = {
        ActivationCheckpointing.NONE: None,
        ActivationCheckpointing.FULL: 1,
        ActivationCheckpointing.EVERY_K: training.activation_checkpointing_every_k,
    }[training.activation_checkpointing]
    return StepFigures(
        sequence_length=training.sequence_length,
        micro_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        compute_bytes=torch.finfo(parallelism.compute_dtype).bits // 8,
        reduce_bytes=torch.finfo(DTYPES[parallelism.mixed_precision.reduce_dtype]).bits // 8,
        optimizer_state_tensors=state_tensors,
        checkpoint_every=every,
        reshard_after_forward=getattr(parallelism, "reshard_after_forward", True),
    )


def layout_of(parallelism: ParallelismStrategy) -> Layout:
    # The data-parallel ranks of one shard group (FSDP2 shards over them × cp).
    shard = shard_degree(parallelism) // parallelism.context_parallel_degree
    return Layout(
        tensor_parallel=parallelism.tensor_parallel_degree,
        context_parallel=parallelism.context_parallel_degree,
        pipeline_parallel=parallelism.pipeline_parallel_degree,
        replicate=parallelism.data_parallel_size // shard,
        shard=shard,
        stages_per_rank=getattr(parallelism, "pipeline_stages_per_rank", 1),
    )


def fills_pipeline_first(parallelism: ParallelismStrategy) -> bool:
    """Whether the pipeline schedule runs every micro batch's forward before any backward (all in memory at once)."""
    schedule = getattr(parallelism, "pipeline_schedule", None)
    return isinstance(parallelism, FSDP2) and schedule in (PipelineSchedule.GPIPE, PipelineSchedule.LOOPED_BFS)


def _names(key: str, module_name: str) -> bool:
    """Whether a plan's key names the module, as ``parallelize_module`` matches them (``*`` for any one name)."""
    atoms, names = key.split("."), module_name.split(".")
    return len(atoms) == len(names) and all(fnmatch(name, atom) for name, atom in zip(names, atoms, strict=True))


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[float, str]:
    """fp32 state tensors the optimizer keeps per parameter (on average), and how the estimate names them."""
    name = type(optimizer).__name__
    defaults = optimizer.defaults
    if isinstance(optimizer, Muon):
        sizes = {True: 0, False: 0}
        for group in optimizer.param_groups:
            sizes[group["use_muon"]] += sum(parameter.numel() for parameter in group["params"])
        hidden_share = sizes[True] / max(1, sizes[True] + sizes[False])
        return hidden_share + 2 * (1 - hidden_share), (
            f"{name}: 1 fp32 momentum buffer ({hidden_share:.0%} hidden matrices), 2 fp32 AdamW moments (the rest)"
        )
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        count = 3 if defaults.get("amsgrad") else 2
        return count, f"{name}: {count} fp32 moments"
    if isinstance(optimizer, torch.optim.SGD):
        count = 1 if defaults.get("momentum") else 0
        return count, f"{name}: {'a momentum buffer' if count else 'no state'}"
    # A user's optimizer: Adam-like state is the common case and errs on the safe side.
    return 2, f"{name}: assumed 2 fp32 state tensors"


def estimate_memory(
    model: LanguageModel,
    config: TrainingAppConfig,
    parallelism: ParallelismStrategy,
    optimizer: torch.optim.Optimizer,
    parameters_on_rank: float,
) -> list[str]:
    """A planning figure per rank (``llm_gym.parallel.layouts.memory``): its training state (``parameters_on_rank``:
    split and sharded), what FSDP2 holds whole, activations and logits of one micro batch (with tensor
    parallelism, split with the sequence and the vocabulary)."""
    state_tensors, optimizer_description = optimizer_state_tensors(optimizer)
    plan = parallelism.tensor_parallel_plan(model)
    estimate = memory(
        model_figures(model, plan),
        step_figures(config, parallelism, state_tensors),
        layout_of(parallelism),
        parameters_on_rank,
        schedule_fills_first=fills_pipeline_first(parallelism),
    )
    return [
        f"memory per rank (estimate, fp32 master weights, {optimizer_description}, {parallelism.compute_dtype}): "
        f"~{estimate.total / GIB:.2f} GiB = state {estimate.state / GIB:.2f} + gathered by FSDP2 "
        f"{estimate.unsharded / GIB:.2f} + activations {estimate.activations / GIB:.2f} (activation checkpointing: "
        f"{config.training.activation_checkpointing.value}) + logits {estimate.logits / GIB:.2f}"
    ]


def _check_datasets(config: TrainingAppConfig, data_parallel_size: int, registry: ResolverRegistry) -> Iterator[str]:
    """Each dataset whose files are here, built and checked as `run` does; the others said to be absent."""
    nodes = {"train": config.data.train_dataset, **config.data.eval_datasets}
    for split, node in nodes.items():
        try:
            dataset = registry.build_component_by_config(node)
        except MissingInputError as error:
            yield f"data {split}: not checked here ({error})"
            continue
        if split == "train":
            check_train_dataset_size(len(dataset), config.training, data_parallel_size)
        yield f"data {split}: {len(dataset):,} samples"


def _check_evaluators(config: TrainingAppConfig, model: LanguageModel, registry: ResolverRegistry) -> Iterator[str]:
    try:
        evaluators = build_evaluators(config, model, registry)
    except MissingInputError as error:
        yield f"evaluation: not checked here ({error})"
        return
    for evaluator in evaluators:
        examples = getattr(evaluator, "examples", None)
        yield f"evaluation {evaluator.name}: {type(evaluator).__name__}" + (
            f", {len(examples):,} examples" if examples is not None else ""
        )
