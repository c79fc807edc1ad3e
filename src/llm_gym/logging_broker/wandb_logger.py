"""Weights & Biases: each metric as ``<split>/<key>`` at its step, the resolved config as the run config."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_gym.errors import UserError
from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import MetricsRecord

RUN_ID_FILE = "wandb_run_id"


class WandBConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = Field("llm_gym", min_length=1)
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = Field(default_factory=list)


class WandB(Subscriber):
    """One W&B run per experiment directory: a resumed training run continues the W&B run it started.

    Its id is kept in ``experiment_dir/wandb_run_id``. Steps the W&B run already holds (logged by a run killed
    after its last checkpoint) are not logged again, since W&B only accepts increasing steps.
    """

    message_types = (MetricsRecord,)

    def __init__(
        self, config: WandBConfig, experiment_dir: Path, resolved_config: dict, resume_step: int | None
    ) -> None:
        try:
            import wandb
        except ImportError as error:
            raise UserError("the WandB logger needs wandb: pip install 'llm_gym[wandb]'") from error

        experiment_dir = Path(experiment_dir)
        experiment_dir.mkdir(parents=True, exist_ok=True)
        run_id_file = experiment_dir / RUN_ID_FILE
        resume_id = run_id_file.read_text().strip() if resume_step is not None and run_id_file.exists() else None
        try:
            self._run = wandb.init(
                mode=config.mode,
                project=config.project,
                entity=config.entity,
                name=config.run_name,
                tags=list(config.tags),
                config=resolved_config,
                dir=str(experiment_dir),
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="create_new",
            )
        except wandb.errors.Error as error:
            raise UserError(f"wandb could not start a run ({config.mode} mode): {error}") from error
        if config.mode != "disabled":
            run_id_file.write_text(self._run.id + "\n")
        self._first_new_step = self._run.step

    def consume(self, message: MetricsRecord) -> None:
        if message.step < self._first_new_step:
            return
        self._run.log({f"{message.split}/{key}": value for key, value in message.metrics.items()}, step=message.step)

    def close(self) -> None:
        self._run.finish()
