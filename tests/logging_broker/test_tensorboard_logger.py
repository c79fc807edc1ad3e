"""TensorBoard: scalars ``<split>/<key>`` at the optimizer step, and a resumed run replacing later events."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_gym.logging_broker import MetricsRecord
from llm_gym.logging_broker.tensorboard_logger import TensorBoard, TensorBoardConfig


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def log_steps(logger: TensorBoard, steps, loss_offset: float = 0.0) -> None:
    for step in steps:
        logger.consume(MetricsRecord(step, "train", {"loss": step + loss_offset, "lr": 0.5}))
    logger.close()


def test_metrics_become_split_prefixed_scalars_under_the_experiment_dir(tmp_path):
    logger = TensorBoard(TensorBoardConfig(), tmp_path, {}, None)
    logger.consume(MetricsRecord(1, "train", {"loss": 3.0, "tokens_seen": 64}))
    logger.consume(MetricsRecord(1, "val", {"loss": 2.5}))
    logger.close()
    assert logger.log_dir == tmp_path / "tensorboard"
    assert scalars(tmp_path / "tensorboard") == {
        "train/loss": [(1, 3.0)],
        "train/tokens_seen": [(1, 64.0)],
        "val/loss": [(1, 2.5)],
    }


def test_log_dir_overrides_the_location(tmp_path):
    log_steps(TensorBoard(TensorBoardConfig(log_dir=str(tmp_path / "tb")), tmp_path / "experiment", {}, None), [1])
    assert scalars(tmp_path / "tb")["train/loss"] == [(1, 1.0)]
    assert not (tmp_path / "experiment" / "tensorboard").exists()


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    # Killed at step 5, checkpoint at step 3.
    log_steps(TensorBoard(TensorBoardConfig(), tmp_path, {}, None), range(1, 6))
    log_steps(TensorBoard(TensorBoardConfig(), tmp_path, {}, 3), range(4, 7), loss_offset=0.25)
    assert scalars(tmp_path / "tensorboard")["train/loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.25), (5, 5.25), (6, 6.25)
    ]  # fmt: skip
