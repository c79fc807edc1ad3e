"""The schema of a training config: plain settings sections plus component nodes.

Cross-field rules that need the whole picture (batch sizes against the world size, mesh degrees) are
checked here too, before anything heavy is built.
"""

from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    model_validator,
)

from llm_gym.registry.component import Component, ComponentNode, registry_of
from llm_gym.seeds import Seed


def _keeps_one_or_all(count: int) -> int:
    if count == 0:  # it would delete the checkpoint just saved
        raise ValueError("must be -1 (keep all) or at least 1")
    return count


KeepCount = Annotated[int, Field(ge=-1), AfterValidator(_keeps_one_or_all)]
"""How many of the newest checkpoints to keep: -1 = all, else at least 1 (``checkpointing.keep_last``, and
the ``KeepLast`` strategy it stands for)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExperimentSettings(_Section):
    # Their defaults are TrainingAppConfig.composition_defaults', where ${experiment.experiment_id} resolves.
    experiment_id: str = Field(min_length=1)
    output_dir: Path = Field(description="experiment directory: config.yaml, metrics.jsonl, checkpoints/")
    seed: Seed


class NonFiniteAction(str, Enum):
    STOP = "stop"
    SKIP = "skip"


class ActivationCheckpointing(str, Enum):
    NONE = "none"
    FULL = "full"
    EVERY_K = "every_k"


class CompileScope(str, Enum):
    """What ``training.compile`` hands ``torch.compile``; ``true`` and ``false`` read as ``blocks`` and ``none``."""

    NONE = "none"
    BLOCKS = "blocks"
    MODEL = "model"


def _compile_scope(value: object) -> object:
    if isinstance(value, bool):
        return CompileScope.BLOCKS if value else CompileScope.NONE
    return value


class TrainingSettings(_Section):
    max_steps: PositiveInt = Field(description="optimizer steps in total; a resumed run stops at the same total")
    sequence_length: PositiveInt
    micro_batch_size: PositiveInt = Field(description="samples per rank per forward pass")
    gradient_accumulation_steps: PositiveInt = 1
    global_batch_size: PositiveInt | None = Field(
        None, description="samples per optimizer step; must equal micro × accumulation × data-parallel ranks"
    )
    eval_interval: PositiveInt = Field(description="evaluate every this many steps, and at the end")
    eval_at_start: bool = Field(False, description="also evaluate before the first step (logged as step 0)")
    eval_samples: PositiveInt | None = Field(
        None,
        description="samples per split per evaluation, the split's first ones, the same on any number of ranks "
        "and micro batch size; null = the whole split",
    )
    log_interval: PositiveInt = Field(
        10, description="a train line every this many steps; only these, evaluations and saves wait for the device"
    )
    max_grad_norm: PositiveFloat | None = Field(1.0, description="clip by global norm; null = no clipping")
    z_loss_weight: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="weight of the z-loss, log² of the softmax normaliser; 0 = off"
    )
    loss_chunk_tokens: NonNegativeInt = Field(
        0,
        description="0 = the loss over the whole logits; N = the chunked loss, N tokens' logits at a time (recomputed "
        "in the backward), never the whole logits",
    )
    on_nonfinite: NonFiniteAction = NonFiniteAction.STOP
    max_consecutive_skipped_steps: PositiveInt = Field(
        10, description="with on_nonfinite: skip, stop the run (exit 2) when this many steps in a row are skipped"
    )
    hang_timeout_s: PositiveFloat | None = Field(
        None,
        description="end the run (every rank's stacks in hangs/) when no step, evaluation or save finishes for this "
        "long; null = never",
    )
    collective_timeout_s: PositiveFloat = Field(
        1800, description="how long a collective may wait for the other ranks before the process group fails"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.NONE
    activation_checkpointing_every_k: PositiveInt = 2
    compile: Annotated[CompileScope, BeforeValidator(_compile_scope)] = Field(
        CompileScope.NONE,
        description="torch.compile: none; blocks (or true): each transformer block, before sharding; model: the "
        "model's whole forward, from embedding to logits",
    )
    float32_matmul_precision: Literal["highest", "high", "medium"] = Field(
        "highest",
        description="torch.set_float32_matmul_precision for the float32 matrix products: highest (float32); high "
        "(TF32 on NVIDIA GPUs); medium (bfloat16 products summed in float32, on GPUs and on CPUs with bfloat16 "
        "instructions)",
    )
    meta_device_init: bool = Field(
        False,
        description="materialise and initialise each shard after sharding, not the whole model on every rank first "
        "(models larger than a device)",
    )

    @model_validator(mode="before")
    @classmethod
    def _eval_batches_was_replaced(cls, data: object) -> object:
        # The older key counted micro batches per rank: copying its value over would evaluate less.
        if isinstance(data, dict) and "eval_batches" in data:
            raise ValueError(
                "training.eval_batches was replaced by training.eval_samples, which counts samples: "
                "eval_batches × micro_batch_size × ranks evaluates as much as before"
            )
        return data

    def check_batch_sizes(self, data_parallel_size: int) -> None:
        """Global batch = micro batch × gradient accumulation × data-parallel ranks, when it is given."""
        derived = self.micro_batch_size * self.gradient_accumulation_steps * data_parallel_size
        if self.global_batch_size is not None and self.global_batch_size != derived:
            raise ValueError(
                f"training.global_batch_size ({self.global_batch_size}) must equal micro_batch_size "
                f"({self.micro_batch_size}) × gradient_accumulation_steps ({self.gradient_accumulation_steps})"
                f" × data-parallel ranks ({data_parallel_size}) = {derived}"
            )

    def samples_per_step(self, data_parallel_size: int) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * data_parallel_size


class CheckpointingSettings(_Section):
    every_n_steps: NonNegativeInt = Field(0, description="save every this many steps; 0 = only at the end")
    keep_last: KeepCount = Field(1, description="keep this many newest checkpoints; -1 = all")
    in_background: bool = Field(
        False,
        alias="async",
        description="save in the background: training goes on once the state is copied to host memory; the "
        "checkpoint becomes latest once every rank has written it",
    )
    strategies: list[Component("checkpoint_strategy")] = Field(
        default_factory=list, description="more saving/retention strategies, e.g. KeepEveryNSteps"
    )
    warm_start_from: Path | None = Field(
        None,
        description="initialise model weights from this checkpoint (a step_<N>, checkpoints/ or experiment "
        "directory) or weights file (.safetensors, .pt); optimizer and schedule start fresh",
    )
    branch_from: Path | None = Field(
        None,
        description="start this new run from a checkpoint of another (a step_<N>, checkpoints/ or experiment "
        "directory) with its whole state: weights, optimizer moments, data position, step; the schedule, "
        "max_steps and optimizer settings come from this config (a cooldown branch)",
    )

    @model_validator(mode="after")
    def _one_starting_point(self) -> "CheckpointingSettings":
        if self.branch_from is not None and self.warm_start_from is not None:
            raise ValueError(
                "set branch_from (the whole state of another run) or warm_start_from (its weights only), not both"
            )
        return self


class ParameterGroupRule(_Section):
    """Settings for the parameters whose names match ``match``; later rules override earlier ones."""

    match: str = Field(
        min_length=1, description="glob over parameter names (* also spans dots), e.g. token_embedding.* or *norm*"
    )
    lr_multiplier: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="the group's lr (and its schedule) × this"
    )
    weight_decay: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="this weight decay instead of the optimizer's"
    )

    @model_validator(mode="after")
    def _sets_something(self) -> "ParameterGroupRule":
        if self.lr_multiplier is None and self.weight_decay is None:
            raise ValueError(f"the rule for '{self.match}' sets neither lr_multiplier nor weight_decay")
        return self


MEMORY_SNAPSHOTS_NEED_A_GPU = (
    "profiling.memory_snapshot_step and memory_snapshot_on_oom record CUDA memory, and this run trains on {device}: "
    "unset them, or train on a GPU"
)


class ProfilingSettings(_Section):
    trace_steps: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="[first, last]: record a torch profiler trace of these steps into profiles/; null = none"
    )
    trace_ranks: list[NonNegativeInt] = Field(default_factory=lambda: [0], description="the ranks that record it")
    memory_snapshot_step: PositiveInt | None = Field(
        None, description="dump a CUDA memory snapshot (every allocation, with its stack) after this step; GPU only"
    )
    memory_snapshot_on_oom: bool = Field(
        False, description="dump a CUDA memory snapshot when a step runs out of device memory; GPU only"
    )

    @property
    def snapshots_memory(self) -> bool:
        return self.memory_snapshot_step is not None or self.memory_snapshot_on_oom

    @model_validator(mode="after")
    def _steps_in_order(self) -> "ProfilingSettings":
        if self.trace_steps is not None and self.trace_steps[0] > self.trace_steps[1]:
            first, last = self.trace_steps
            raise ValueError(f"trace_steps [{first}, {last}]: the first step comes after the last; swap them")
        return self


class DataSettings(_Section):
    tokenizer: str = Field("byte", description="'byte' or the path of a Hugging Face tokenizer.json")
    train_dataset: Component("dataset")
    eval_datasets: dict[str, Component("dataset")] = Field(default_factory=dict)
    sampler: Component("sampler")
    collator: Component("collator")
    dataloader: Component("dataloader")


class EvaluationSettings(_Section):
    evaluators: list[Component("evaluator")] = Field(
        default_factory=list,
        description="run every eval_interval beside the eval splits: MultipleChoice tasks, BitsPerByte of a split",
    )


class TrainingAppConfig(_Section):
    # What almost every run leaves as it is, written as a YAML file would write it: the first layer of every
    # composed config (config/composition.py), under every file. So ${experiment.seed} resolves in any file,
    # a file's own sampler of another type_hint drops these keys as a later file's would, `loggers+=[...]`
    # appends to these loggers, and config.yaml records what ran. Each node's other settings are its config
    # model's defaults.
    composition_defaults: ClassVar[dict[str, Any]] = {
        "experiment": {"experiment_id": "default", "output_dir": "experiments/${experiment.experiment_id}", "seed": 42},
        "data": {
            "sampler": {"type_hint": "ResumableDistributedSampler", "config": {"seed": "${experiment.seed}"}},
            "collator": {"type_hint": "CausalLMCollator"},
            "dataloader": {"type_hint": "DataLoader"},
        },
        "loggers": [{"type_hint": "Console"}, {"type_hint": "MetricsJsonl"}],
    }

    user_modules: list[str] = Field(default_factory=list, description="modules imported to register components")
    experiment: ExperimentSettings
    training: TrainingSettings
    checkpointing: CheckpointingSettings = Field(default_factory=CheckpointingSettings)
    model: Component("model")
    parallelism: Component("parallelism")
    optimizer: Component("optimizer")
    parameter_groups: list[ParameterGroupRule] = Field(
        default_factory=list, description="lr multipliers and weight decay by parameter name, for every optimizer"
    )
    lr_scheduler: Component("lr_scheduler")
    data: DataSettings
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    profiling: ProfilingSettings = Field(default_factory=ProfilingSettings)
    loggers: list[Component("logger")] = Field(default_factory=list)

    @model_validator(mode="after")
    def _model_covers_the_training_sequence(self) -> "TrainingAppConfig":
        model_length = getattr(self.model.config, "sequence_length", None)
        if isinstance(model_length, int) and model_length < self.training.sequence_length:
            raise ValueError(
                f"training.sequence_length ({self.training.sequence_length}) exceeds model.config.sequence_length "
                f"({model_length}), the longest sequence the model takes; shorten the one or lengthen the other"
            )
        return self

    @model_validator(mode="after")
    def _evaluators_name_their_splits_once(self) -> "TrainingAppConfig":
        # An evaluator with a `split` reports that eval split (its line replaces the plain one); one with a `name`
        # reports a split of its own, which must not pass for another.
        splits, seen = set(self.data.eval_datasets), set()
        for index, node in enumerate(self.evaluation.evaluators):
            where = f"evaluation.evaluators[{index}]"
            split, name = getattr(node.config, "split", None), getattr(node.config, "name", None)
            if split is not None and split not in splits:
                raise ValueError(
                    f"{where}.config.split: '{split}' is not a split of data.eval_datasets "
                    f"({', '.join(sorted(splits)) or 'none'})"
                )
            if name is not None and (name in splits or name == "train"):
                raise ValueError(f"{where}.config.name: '{name}' is already the name of a split; choose another")
            if (label := split or name) is not None:
                if label in seen:
                    raise ValueError(f"{where}: two evaluators report the split '{label}'")
                seen.add(label)
        return self

    @model_validator(mode="after")
    def _datasets_have_the_training_sequence_length(self) -> "TrainingAppConfig":
        # Longer samples than the model takes fail in the first forward pass; shorter ones train on other
        # sequences than the run reports (the tokens per step of its header).
        nodes = {"data.train_dataset": self.data.train_dataset} | {
            f"data.eval_datasets.{split}": node for split, node in self.data.eval_datasets.items()
        }
        expected = self.training.sequence_length
        for key, value in (item for path, node in nodes.items() for item in _sequence_lengths(node, path)):
            if value != expected:
                raise ValueError(
                    f"{key} ({value}) differs from training.sequence_length ({expected}): every dataset's samples "
                    "must be that long; set it to ${training.sequence_length}"
                )
        return self

    @model_validator(mode="after")
    def _model_parallelism_runs_what_it_supports(self) -> "TrainingAppConfig":
        training, evaluators = self.training, bool(self.evaluation.evaluators)
        unsupported = {
            "tensor_parallel_degree": {
                "training.z_loss_weight": (
                    bool(training.z_loss_weight),
                    "the z-loss needs each token's log-normaliser over the whole vocabulary, which the logits split "
                    "by vocabulary do not hold",
                ),
                "evaluation.evaluators": (
                    evaluators,
                    "evaluators give every rank other examples, while the ranks of a tensor-parallel group must run "
                    "the same inputs",
                ),
                "training.compile: model with activation_checkpointing": (
                    training.compile is CompileScope.MODEL
                    and training.activation_checkpointing is not ActivationCheckpointing.NONE,
                    "torch.compile fails to trace the recomputation of tensor-parallel blocks (torch 2.13: a "
                    "DeviceMesh among the tensors it saves); compile: blocks runs with both",
                ),
                "training.loss_chunk_tokens": (
                    bool(training.loss_chunk_tokens),
                    "tensor parallelism already computes the loss on logits split by vocabulary (loss_parallel), "
                    "no rank holding the whole vocabulary's",
                ),
            },
            "context_parallel_degree": {
                "evaluation.evaluators": (
                    evaluators,
                    "evaluators run the model on whole sequences, while each rank of a context-parallel group holds "
                    "one chunk of them",
                ),
            },
            "pipeline_parallel_degree": {
                "training.loss_chunk_tokens": (
                    bool(training.loss_chunk_tokens),
                    "the last stage hands its logits to torch's pipeline schedule, which computes the loss",
                ),
                "evaluation.evaluators": (
                    evaluators,
                    "evaluators call the whole model, which no rank of a pipeline holds",
                ),
                "training.meta_device_init": (
                    training.meta_device_init,
                    "each stage's weights are drawn as the whole model's are, which needs the whole model "
                    "materialised before it is cut",
                ),
                "training.compile: model": (
                    training.compile is CompileScope.MODEL,
                    "each stage runs its own forward, never the model's; compile: blocks compiles every stage's blocks",
                ),
            },
        }
        for degree_key, options in unsupported.items():
            degree = getattr(self.parallelism.config, degree_key, 1)
            for option, (requested, reason) in options.items():
                if degree > 1 and requested:
                    raise ValueError(
                        f"{option} cannot run with parallelism.config.{degree_key} {degree}: {reason}; unset it, or "
                        f"set {degree_key}: 1"
                    )
        return self

    @model_validator(mode="after")
    def _memory_snapshots_are_of_a_gpu(self) -> "TrainingAppConfig":
        if self.profiling.snapshots_memory and self.training.device == "cpu":
            raise ValueError(MEMORY_SNAPSHOTS_NEED_A_GPU.format(device="cpu"))
        return self

    @model_validator(mode="after")
    def _context_parallel_chunks_are_equal(self) -> "TrainingAppConfig":
        degree = getattr(self.parallelism.config, "context_parallel_degree", 1)
        if degree == 1:
            return self
        key = f"parallelism.config.context_parallel_degree {degree}"
        length = self.training.sequence_length
        if length % degree:
            raise ValueError(
                f"training.sequence_length ({length}) is not divisible by {key}: each rank holds an equal chunk of "
                f"every sequence; choose a sequence_length that is a multiple of {degree}, or another degree"
            )
        return self

    @model_validator(mode="after")
    def _meta_device_init_needs_a_strategy_that_materialises(self, info: ValidationInfo) -> "TrainingAppConfig":
        if not self.training.meta_device_init:
            return self
        registry = registry_of(info)
        supporting = [
            name
            for name in registry.type_hint_names("parallelism")
            if getattr(registry.find_entry("parallelism", name).component, "supports_meta_device_init", True)
        ]
        if self.parallelism.type_hint.name not in supporting:
            strategy = self.parallelism.type_hint.name
            raise ValueError(
                f"training.meta_device_init: true cannot run with parallelism {strategy}, which needs the "
                f"weights when it wraps the model; use a parallelism that supports it ({', '.join(supporting)}) "
                "or training.meta_device_init: false"
            )
        return self


def _sequence_lengths(node: ComponentNode, path: str) -> Iterator[tuple[str, int]]:
    """The ``sequence_length`` of a component node's config and of the nodes inside it (a blend's datasets)."""
    config = node.config
    if isinstance(getattr(config, "sequence_length", None), int):
        yield f"{path}.config.sequence_length", config.sequence_length
    for name in type(config).model_fields:
        value = getattr(config, name)
        children = value if isinstance(value, list | tuple) else [value]
        for index, child in enumerate(children):
            if isinstance(child, ComponentNode):
                child_path = f"{path}.config.{name}" + (f".{index}" if children is value else "")
                yield from _sequence_lengths(child, child_path)
