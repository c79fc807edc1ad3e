"""`llm_gym run`: load the config, join the process group, build everything, resume if asked, train."""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from llm_gym.checkpointing import (
    LATEST_FILE,
    META_FILE,
    CheckpointManager,
    config_differences,
    hyperparameter_changes,
    load_checkpoint,
    load_model_weights,
    read_checkpoint_meta,
    resolve_resume,
    training_state,
)
from llm_gym.config.app import TrainingAppConfig
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.logging_broker import TextMessage
from llm_gym.models.flops import describe_model, flops_per_token
from llm_gym.parallel.distributed import DistributedEnvironment, destroy_distributed, init_distributed
from llm_gym.parallel.strategies import ParallelismStrategy
from llm_gym.registry import get_registry
from llm_gym.training.builder import (
    build_broker,
    build_data,
    build_evaluators,
    build_model,
    build_optimization,
    build_parallelism,
    check_tokenizer,
)
from llm_gym.training.hardware import HardwareMetrics
from llm_gym.training.loop import Trainer, TrainingProgress
from llm_gym.training.summary import describe_global_batch

logger = logging.getLogger(__name__)


class _PeriodicCheckpoints:
    """Adapts the checkpoint manager to the loop: the loop says which step ended, this decides and saves."""

    def __init__(self, manager: CheckpointManager, state: dict, metadata: dict):
        self.manager, self.state, self.metadata = manager, state, metadata

    def maybe_save(self, step: int, is_final: bool) -> None:
        if self.manager.should_save(step, is_final):
            self.manager.save(step, self.state, {**self.metadata, "step": step})


def run_training(
    config_file_path: Path, overrides: Sequence[str] = (), resume: str = "none", allow_config_change: bool = False
) -> None:
    config, resolved = load_config(config_file_path, TrainingAppConfig, overrides)
    env = init_distributed(config.training.device)
    try:
        _train(config, resolved, env, resume, allow_config_change)
    finally:
        destroy_distributed()


def _resume_differences(checkpoint_dir: Path, resolved: dict, world_size: int) -> tuple[list[str], list[str]]:
    """How this run would differ from the one that wrote the checkpoint, compared before anything is loaded:
    the differences that break an exact resume, and the changed hyperparameters."""
    saved = read_checkpoint_meta(checkpoint_dir)
    if "resolved_config" not in saved or "world_size" not in saved:
        return [f"{META_FILE} does not record the config and world size of the run that wrote it"], []
    return (
        config_differences(saved["resolved_config"], resolved, saved["world_size"], world_size),
        hyperparameter_changes(saved["resolved_config"], resolved),
    )


def _train(config: TrainingAppConfig, resolved: dict, env, resume: str, allow_config_change: bool) -> None:
    output_dir = Path(config.experiment.output_dir)
    settings = config.checkpointing
    checkpoints = CheckpointManager(
        output_dir / "checkpoints",
        settings.every_n_steps,
        settings.keep_last,
        [get_registry().build_component_by_config(node) for node in settings.strategies],
    )
    resume_dir = resolve_resume(resume, checkpoints.checkpoint_root)
    if resume_dir is None and (checkpoints.checkpoint_root / LATEST_FILE).exists():
        raise ConfigError(
            f"{checkpoints.checkpoint_root} already holds checkpoints of an earlier run: continue it with "
            "--resume auto, or set another experiment.output_dir"
        )
    differences, changed_hyperparameters = (
        ([], []) if resume_dir is None else _resume_differences(resume_dir, resolved, env.world_size)
    )
    if differences and not allow_config_change:
        raise ConfigError(
            f"the config differs from the checkpoint's in ways that break an exact resume ({resume_dir}):\n  "
            + "\n  ".join(differences)
            + "\npass --allow_config_change to resume anyway"
        )
    parallelism = build_parallelism(config, env)
    built = build_model(config, parallelism)
    tokenizer_line = check_tokenizer(config, built.inner)
    if settings.warm_start_from is not None and resume_dir is None:
        load_model_weights(built.model, settings.warm_start_from)
    optimizer, lr_scheduler = build_optimization(config, built.model)
    data = build_data(config, parallelism)
    evaluators = build_evaluators(config, built.inner)
    progress = TrainingProgress()
    state = training_state(built.model, optimizer, lr_scheduler, data.train_loader, progress)
    # Per-rank seed for dropout and sampling; a resumed run restores these generators instead.
    torch.manual_seed(config.experiment.seed + env.rank)
    metadata = {"resolved_config": resolved, "world_size": env.world_size}
    resume_step = None
    if resume_dir is not None:
        load_checkpoint(resume_dir, state)
        resume_step = progress.step
        if changed_hyperparameters and env.is_main_process:
            logger.warning(
                "resuming with the config's hyperparameters, which differ from the checkpoint's "
                "(the checkpoint restores weights, optimizer moments, counters and the data position):\n  "
                + "\n  ".join(changed_hyperparameters)
            )
    if env.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    broker = build_broker(config, resolved, env.is_main_process, resume_step)
    with broker:
        broker.publish(TextMessage("\n".join(_run_header(config, env, parallelism, built.inner, tokenizer_line))))
        if resume_dir is not None:
            broker.publish(TextMessage(f"resumed from {resume_dir} at step {progress.step}"))
        if differences:
            broker.publish(TextMessage("config changes allowed on resume:\n  " + "\n  ".join(differences)))
        trainer = Trainer(
            settings=config.training,
            model=built.model,
            parallelism=parallelism,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            train_batches=data.train_loader,
            eval_splits=data.eval_splits,
            broker=broker,
            checkpointer=_PeriodicCheckpoints(checkpoints, state, metadata),
            progress=progress,
            batch_keys=data.batch_keys,
            hardware_metrics=HardwareMetrics(
                env.device,
                flops_per_token(built.inner, config.training.sequence_length),
                env.world_size,
                parallelism.compute_dtype,
            ),
            vocab_size=getattr(built.inner, "vocab_size", None),
            evaluators=evaluators,
        )
        trainer.train()
        broker.publish(
            TextMessage(
                f"done at step {progress.step}: metrics in {output_dir / 'metrics.jsonl'}, "
                f"checkpoints in {checkpoints.checkpoint_root}"
            )
        )


def _run_header(
    config: TrainingAppConfig,
    env: DistributedEnvironment,
    parallelism: ParallelismStrategy,
    model: torch.nn.Module,
    tokenizer_line: str,
) -> list[str]:
    """What a log should open with: where the run writes, how it is laid out, what it trains."""
    training = config.training
    return [
        f"llm_gym run {config.experiment.experiment_id} → {config.experiment.output_dir}",
        f"{env.world_size} {'rank' if env.world_size == 1 else 'ranks'} on {env.device.type} "
        f"({type(parallelism).__name__}), {training.max_steps:,} steps",
        describe_global_batch(training, parallelism.data_parallel_size),
        *describe_model(model, training.sequence_length),
        tokenizer_line,
    ]
