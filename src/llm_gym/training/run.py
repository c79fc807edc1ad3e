"""`llm_gym run`: load the config, join the process group, then the run's four phases: plan the resume (which
checkpoint, its own or, for a branch, another run's, and may this config continue it), build every component,
restore the checkpoint's state, train."""

import functools
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from llm_gym.assembly import make_registry
from llm_gym.checkpointing import (
    LATEST_FILE,
    META_FILE,
    CheckpointManager,
    load_checkpoint,
    load_model_weights,
    read_checkpoint_meta,
    resolve_resume,
    training_state,
)
from llm_gym.checkpointing.loading import find_checkpoint
from llm_gym.config.app import MEMORY_SNAPSHOTS_NEED_A_GPU, TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError, UserError
from llm_gym.logging_broker import TextMessage
from llm_gym.models.contract import LanguageModel
from llm_gym.models.flops import describe_model, flops_per_token
from llm_gym.outputs import refuse_writing_over_inputs, writing
from llm_gym.parallel.collectives import gather_floats
from llm_gym.parallel.distributed import DistributedEnvironment, destroy_distributed, host_group, init_distributed
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.registry import ResolverRegistry
from llm_gym.training.builder import (
    BuiltData,
    BuiltModel,
    build_broker,
    build_data,
    build_evaluators,
    build_model,
    build_optimization,
    build_parallelism,
    check_tokenizer,
    end_of_document_id,
)
from llm_gym.training.hardware import HardwareMetrics
from llm_gym.training.loop import Evaluator, LossWindow, Trainer, TrainingProgress
from llm_gym.training.preemption import PreemptionWatch
from llm_gym.training.profiling import MemorySnapshots, StepTrace
from llm_gym.training.resume_policy import config_differences, hyperparameter_changes, with_defaults
from llm_gym.training.summary import describe_global_batch, describe_mesh
from llm_gym.training.watchdog import HangWatchdog

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
"""The resolved config of the run, in the experiment directory."""


class _PeriodicCheckpoints:
    """Adapts the checkpoint manager to the loop: the loop asks whether a step is due (and then reads the steps
    from the device, stopping at a non-finite one), saves it, and at its end waits for a save in the
    background."""

    def __init__(self, manager: CheckpointManager, state: dict, metadata: dict):
        self.manager, self.state, self.metadata = manager, state, metadata

    def is_due(self, step: int, is_final: bool) -> bool:
        self.manager.poll()  # publishes a save in the background once every rank has written it
        return self.manager.should_save(step, is_final)

    def save(self, step: int) -> None:
        self.manager.save(step, self.state, {**self.metadata, "step": step})

    def finish(self) -> None:
        self.manager.wait()


def run_training(
    config_file_path: Path, overrides: Sequence[str] = (), resume: str = "none", allow_config_change: bool = False
) -> None:
    registry = make_registry()
    config, resolved = load_config(config_file_path, TrainingAppConfig, overrides, registry=registry)
    env = init_distributed(config.training.device, config.training.collective_timeout_s)
    try:
        _train(config, resolved, registry, env, resume, allow_config_change, Path(config_file_path))
    finally:
        destroy_distributed()


def _train(
    config: TrainingAppConfig,
    resolved: dict,
    registry: ResolverRegistry,
    env: DistributedEnvironment,
    resume: str,
    allow_config_change: bool,
    config_file_path: Path,
) -> None:
    """The run in its four phases: plan the resume, build, restore, train."""
    if config.profiling.snapshots_memory and env.device.type != "cuda":  # training.device: auto, without a GPU
        raise ConfigError(MEMORY_SNAPSHOTS_NEED_A_GPU.format(device=env.device.type))
    # Process-wide, so set on every run: a run after another in one process starts from its own setting.
    torch.set_float32_matmul_precision(config.training.float32_matmul_precision)
    checkpoints = _checkpoint_manager(config, registry)
    plan = plan_resume(
        resume,
        checkpoints,
        config_file_path,
        resolved,
        registry,
        env.world_size,
        allow_config_change,
        config.checkpointing.branch_from,
        config.training.max_steps,
    )
    run = build_run(config, registry, env, warm_start=plan.checkpoint_dir is None)
    resume_step = restore(run, plan, config.experiment.seed, env)
    train(run, plan, resume_step, checkpoints, config, resolved, registry, env)


def _checkpoint_manager(config: TrainingAppConfig, registry: ResolverRegistry) -> CheckpointManager:
    settings = config.checkpointing
    return CheckpointManager(
        Path(config.experiment.output_dir) / "checkpoints",
        settings.every_n_steps,
        settings.keep_last,
        [registry.build_component_by_config(node) for node in settings.strategies],
        in_background=settings.in_background,
    )


@dataclass(frozen=True)
class ResumePlan:
    """Where the run starts, decided before anything is built: from scratch, or from a checkpoint."""

    checkpoint_dir: Path | None
    """None for a fresh start."""
    differences: list[str] = field(default_factory=list)
    """How the config differs from the checkpoint's in ways that break an exact resume (allowed by the user)."""
    changed_hyperparameters: list[str] = field(default_factory=list)
    """Settings the resumed run takes from its config rather than from the checkpoint, where they differ."""
    branch: bool = False
    """The checkpoint is another run's (``checkpointing.branch_from``): this run continues it exactly, as a
    resume does, in its own directory and under its own schedule and length (a cooldown branch)."""
    branched_from: dict | None = None
    """What this run's checkpoints record of the checkpoint it branched from (``checkpoint``, ``step``): the
    branch point, or, resuming a branch, its own checkpoint's record."""

    @property
    def start(self) -> str:
        return "branch" if self.branch else "resume"


def plan_resume(
    resume: str,
    checkpoints: CheckpointManager,
    config_file_path: Path,
    resolved: dict,
    registry: ResolverRegistry,
    world_size: int,
    allow_config_change: bool,
    branch_from: Path | None,
    max_steps: int,
) -> ResumePlan:
    """Phase 1: which checkpoint ``--resume`` names, else the one ``branch_from`` names (``checkpointing``'s, for a
    run of ``max_steps``), and whether this config may continue it (resume_policy)."""
    checkpoint_root = checkpoints.checkpoint_root
    checkpoint_dir = resolve_resume(resume, checkpoint_root)
    branch = False
    if checkpoint_dir is None:
        # A fresh run would prune checkpoints it did not write. Without `latest`, --resume auto starts from
        # scratch over what a run killed inside its first save left, which is its own.
        earlier_run = (checkpoint_root / LATEST_FILE).exists() or (
            resume == "none" and checkpoint_root.is_dir() and checkpoints.step_dirs()
        )
        if earlier_run:
            raise ConfigError(
                f"{checkpoint_root} already holds checkpoints of an earlier run: continue it with "
                "--resume auto, or set another experiment.output_dir"
            )
        # A resumed run updates its own config.yaml, which it may have been started from; a fresh one must not
        # replace the file it was given.
        refuse_writing_over_inputs([checkpoint_root.parent / CONFIG_FILE], [config_file_path], "experiment.output_dir")
        if branch_from is None:
            return ResumePlan(None)
        checkpoint_dir, branch = _branch_point(branch_from, max_steps), True
    saved = read_checkpoint_meta(checkpoint_dir)
    branched_from = (
        {"checkpoint": str(checkpoint_dir.resolve()), "step": saved["step"]} if branch else saved.get("branched_from")
    )
    if "resolved_config" not in saved or "world_size" not in saved:
        differences = [f"{META_FILE} does not record the config and world size of the run that wrote it"]
        changed_hyperparameters = []
    else:
        saved_config, current_config = with_defaults(saved["resolved_config"], resolved, TrainingAppConfig, registry)
        differences = config_differences(saved_config, current_config, saved["world_size"], world_size)
        changed_hyperparameters = hyperparameter_changes(saved_config, current_config)
    plan = ResumePlan(checkpoint_dir, differences, changed_hyperparameters, branch, branched_from)
    if plan.differences and not allow_config_change:
        raise ConfigError(
            f"the config differs from the checkpoint's in ways that break an exact {plan.start} ({checkpoint_dir}):"
            "\n  " + "\n  ".join(plan.differences) + f"\npass --allow_config_change to {plan.start} anyway"
        )
    return plan


def _branch_point(branch_from: Path, max_steps: int) -> Path:
    """The checkpoint ``checkpointing.branch_from`` means, checked to be complete and before the last step."""
    try:
        checkpoint_dir = find_checkpoint(branch_from)
        step = read_checkpoint_meta(checkpoint_dir)["step"]
    except UserError as error:
        raise UserError(f"checkpointing.branch_from: {error}") from None
    if not isinstance(step, int) or step >= max_steps:
        raise ConfigError(
            f"checkpointing.branch_from: {checkpoint_dir} is at step {step}, and training.max_steps ({max_steps}) "
            "must be later: a branch trains on from the checkpoint's step to max_steps"
        )
    return checkpoint_dir


@dataclass
class BuiltRun:
    """Every component of the run, wired; ``state`` is what a checkpoint saves and restores."""

    parallelism: ParallelismStrategy
    model: BuiltModel
    tokenizer_line: str
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    data: BuiltData
    progress: TrainingProgress
    loss_window: LossWindow
    state: dict
    evaluators: list[Evaluator]


def build_run(
    config: TrainingAppConfig, registry: ResolverRegistry, env: DistributedEnvironment, warm_start: bool
) -> BuiltRun:
    """Phase 2: parallelism, model (with its initial or warm-start weights), optimization, data and evaluators."""
    parallelism = build_parallelism(config, env, registry)
    built = build_model(config, parallelism, registry)
    tokenizer_line = check_tokenizer(config, built.inner)
    if warm_start and config.checkpointing.warm_start_from is not None:
        load_model_weights(built.model, config.checkpointing.warm_start_from)
    optimizer, lr_scheduler = build_optimization(config, built.model, registry)
    data = build_data(config, parallelism, registry, end_of_document_id(config, built.inner))
    evaluators = build_evaluators(config, built.inner, registry)
    progress, loss_window = TrainingProgress(), LossWindow()
    state = training_state(built.model, optimizer, lr_scheduler, data.train_loader, progress, loss_window)
    return BuiltRun(
        parallelism, built, tokenizer_line, optimizer, lr_scheduler, data, progress, loss_window, state, evaluators
    )


def restore(run: BuiltRun, plan: ResumePlan, seed: int, env: DistributedEnvironment) -> int | None:
    """Phase 3: seed this rank's generators, then, when resuming, load the checkpoint's state over everything
    (generators included). Returns the step resumed at, or None for a fresh start."""
    # Per-rank seed for dropout and sampling; a resumed run restores these generators instead.
    torch.manual_seed(seed + env.rank)
    if plan.checkpoint_dir is None:
        return None
    load_checkpoint(plan.checkpoint_dir, run.state)
    if plan.changed_hyperparameters and env.is_main_process:
        logger.warning(
            f"{'branching' if plan.branch else 'resuming'} with the config's hyperparameters, which differ from the "
            "checkpoint's (the checkpoint restores weights, optimizer moments, counters and the data position):\n  "
            + "\n  ".join(plan.changed_hyperparameters)
        )
    return run.progress.step


def train(
    run: BuiltRun,
    plan: ResumePlan,
    resume_step: int | None,
    checkpoints: CheckpointManager,
    config: TrainingAppConfig,
    resolved: dict,
    registry: ResolverRegistry,
    env: DistributedEnvironment,
) -> None:
    """Phase 4: write the resolved config, start the loggers, and run the loop to ``training.max_steps``."""
    output_dir = Path(config.experiment.output_dir)
    if env.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with writing(output_dir / CONFIG_FILE):
            (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
    metadata = {"resolved_config": resolved, "world_size": env.world_size}
    if plan.branched_from is not None:
        metadata["branched_from"] = plan.branched_from
    model, progress = run.model, run.progress
    broker = build_broker(config, resolved, env.is_main_process, resume_step, registry)
    with broker:
        header = _run_header(config, env, run.parallelism, model.inner, run.tokenizer_line)
        broker.publish(TextMessage("\n".join(header)))
        if plan.branch:
            branched = f"branched from {plan.checkpoint_dir} at step {progress.step}, into {output_dir}"
            broker.publish(TextMessage(branched))
        elif plan.checkpoint_dir is not None:
            broker.publish(TextMessage(f"resumed from {plan.checkpoint_dir} at step {progress.step}"))
        if plan.differences:
            broker.publish(TextMessage(f"config changes allowed on {plan.start}:\n  " + "\n  ".join(plan.differences)))
        host = host_group(env)
        profiling = config.profiling
        step_trace = None
        if profiling.trace_steps is not None and env.rank in profiling.trace_ranks:
            first, last = profiling.trace_steps
            trace_path = output_dir / "profiles" / f"trace_rank{env.rank}_steps{first}-{last}.json"
            step_trace = StepTrace(first, last, trace_path)
        memory = None
        if profiling.snapshots_memory:
            memory = MemorySnapshots(
                profiling.memory_snapshot_step, profiling.memory_snapshot_on_oom, output_dir / "profiles", env.rank
            )
        timeout_s = config.training.hang_timeout_s
        watchdog = HangWatchdog(timeout_s, output_dir, env.rank) if timeout_s is not None else None
        trainer = Trainer(
            settings=config.training,
            model=model.model,
            parallelism=run.parallelism,
            optimizer=run.optimizer,
            lr_scheduler=run.lr_scheduler,
            train_batches=run.data.train_loader,
            eval_splits=run.data.eval_splits,
            broker=broker,
            checkpointer=_PeriodicCheckpoints(checkpoints, run.state, metadata),
            progress=progress,
            loss_window=run.loss_window,
            hardware_metrics=HardwareMetrics(
                env.device,
                flops_per_token(model.inner, config.training.sequence_length),
                env.world_size,
                run.parallelism.compute_dtype,
            ),
            vocab_size=model.inner.vocab_size,
            evaluators=run.evaluators,
            stop_requests=PreemptionWatch(host),
            heartbeat=watchdog,
            step_trace=step_trace,
            memory_snapshots=memory,
            gather_step_seconds=functools.partial(gather_floats, group=host) if host is not None else None,
        )
        recording = memory.recording() if memory is not None else nullcontext()
        with trainer.stop_requests.installed(), watchdog if watchdog is not None else nullcontext(), recording:
            try:
                trainer.train()
            finally:
                if trainer.step_trace is not None:
                    trainer.step_trace.close()
        skipped = f" ({progress.skipped_steps} skipped: non-finite values)" if progress.skipped_steps else ""
        broker.publish(
            TextMessage(
                f"done at step {progress.step}{skipped}: metrics in {output_dir / 'metrics.jsonl'}, "
                f"checkpoints in {checkpoints.checkpoint_root}"
            )
        )


def _run_header(
    config: TrainingAppConfig,
    env: DistributedEnvironment,
    parallelism: ParallelismStrategy,
    model: LanguageModel,
    tokenizer_line: str,
) -> list[str]:
    """What a log should open with: where the run writes, how it is laid out, what it trains."""
    training = config.training
    matmul_precision = ""
    if training.float32_matmul_precision != "highest":
        matmul_precision = f", float32 matmul precision {training.float32_matmul_precision}"
    return [
        f"llm_gym run {config.experiment.experiment_id} → {config.experiment.output_dir}",
        f"{env.world_size} {'rank' if env.world_size == 1 else 'ranks'} on {env.device.type} "
        f"({type(parallelism).__name__}), {training.max_steps:,} steps{matmul_precision}",
        *([describe_mesh(parallelism)] if parallelism.model_parallel_degree > 1 else []),
        describe_global_batch(training, parallelism.data_parallel_size),
        *describe_model(model, training.sequence_length),
        tokenizer_line,
    ]
