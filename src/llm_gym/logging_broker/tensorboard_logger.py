"""TensorBoard event files: every metric as the scalar ``<split>/<key>``."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llm_gym.logging_broker.broker import Subscriber
from llm_gym.logging_broker.messages import MetricsRecord


class TensorBoardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    log_dir: str | None = Field(None, description="default: <experiment_dir>/tensorboard")


class TensorBoard(Subscriber):
    message_types = (MetricsRecord,)

    def __init__(
        self, config: TensorBoardConfig, experiment_dir: Path, resolved_config: dict, resume_step: int | None
    ) -> None:
        # Deferred: tensorboard's import is slow and only runs that ask for it should pay.
        from torch.utils.tensorboard import SummaryWriter

        log_dir = config.log_dir
        self.log_dir = Path(log_dir) if log_dir is not None else Path(experiment_dir) / "tensorboard"
        # A resumed run hides the events that the killed run wrote after the checkpoint.
        purge_step = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def consume(self, message: MetricsRecord) -> None:
        for key, value in message.metrics.items():
            self._writer.add_scalar(f"{message.split}/{key}", value, message.step)

    def close(self) -> None:
        self._writer.close()
