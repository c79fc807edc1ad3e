"""Weights & Biases without a network: disabled and offline runs, and the resume logic against a stand-in."""

import sys
import types

import pytest

from llm_gym.errors import UserError
from llm_gym.logging_broker import MetricsRecord
from llm_gym.logging_broker.wandb_logger import RUN_ID_FILE, WandB, WandBConfig


@pytest.fixture(autouse=True)
def quiet_local_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_disabled_mode_logs_nothing_and_writes_nothing(tmp_path):
    experiment_dir = tmp_path / "experiment"
    logger = WandB(WandBConfig(mode="disabled"), experiment_dir, {"training": {"max_steps": 2}}, None)
    logger.consume(MetricsRecord(1, "train", {"loss": 3.0}))
    logger.close()
    assert list(experiment_dir.iterdir()) == []


def test_offline_mode_writes_a_run_under_the_experiment_dir(tmp_path):
    logger = WandB(WandBConfig(mode="offline", tags=["test"]), tmp_path, {"training": {"max_steps": 2}}, None)
    logger.consume(MetricsRecord(1, "train", {"loss": 3.0, "lr": 1e-3}))
    logger.consume(MetricsRecord(1, "val", {"loss": 2.9}))
    logger.close()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (run_dir / f"run-{run_id}.wandb").stat().st_size > 0


class FakeRun:
    def __init__(self, run_id: str, step: int):
        self.id, self.step, self.logged, self.finished = run_id, step, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in module recording ``wandb.init``'s arguments; its run already holds steps 0..4."""
    module = types.SimpleNamespace(errors=types.SimpleNamespace(Error=type("Error", (Exception,), {})), inits=[])

    def init(**kwargs):
        module.inits.append(kwargs)
        return FakeRun(kwargs["id"] or "new-id", step=5 if kwargs["id"] else 0)

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_the_run_gets_config_dir_and_metrics_by_split_and_step(tmp_path, fake_wandb):
    logger = WandB(
        WandBConfig(mode="online", project="p", entity="e", run_name="r", tags=["t"]), tmp_path, {"a": 1}, None
    )
    logger.consume(MetricsRecord(1, "train", {"loss": 3.0, "lr": 0.1}))
    logger.consume(MetricsRecord(1, "val", {"loss": 2.5}))
    logger.close()
    (init,) = fake_wandb.inits
    expected = {"mode": "online", "project": "p", "entity": "e", "name": "r", "tags": ["t"], "config": {"a": 1}}
    assert {key: init[key] for key in expected} == expected
    assert init["dir"] == str(tmp_path) and init["id"] is None and init["resume"] is None
    assert logger._run.logged == [(1, {"train/loss": 3.0, "train/lr": 0.1}), (1, {"val/loss": 2.5})]
    assert logger._run.finished
    assert (tmp_path / RUN_ID_FILE).read_text() == "new-id\n"


def test_a_resumed_run_continues_the_wandb_run_without_relogging_its_steps(tmp_path, fake_wandb):
    (tmp_path / RUN_ID_FILE).write_text("old-id\n")
    logger = WandB(WandBConfig(mode="online"), tmp_path, {}, 3)
    for step in range(4, 7):
        logger.consume(MetricsRecord(step, "train", {"loss": float(step)}))
    assert (fake_wandb.inits[0]["id"], fake_wandb.inits[0]["resume"]) == ("old-id", "allow")
    assert [step for step, _ in logger._run.logged] == [5, 6]


def test_a_fresh_run_in_the_same_directory_starts_a_new_wandb_run(tmp_path, fake_wandb):
    (tmp_path / RUN_ID_FILE).write_text("old-id\n")
    WandB(WandBConfig(mode="online"), tmp_path, {}, None).close()
    assert fake_wandb.inits[0]["id"] is None
    assert (tmp_path / RUN_ID_FILE).read_text() == "new-id\n"


def test_a_wandb_failure_is_a_user_error(tmp_path, fake_wandb):
    def init(**kwargs):
        raise fake_wandb.errors.Error("api_key not configured (no-tty)")

    fake_wandb.init = init
    with pytest.raises(UserError, match=r"wandb could not start a run \(online mode\): api_key not configured"):
        WandB(WandBConfig(mode="online"), tmp_path, {}, None)


def test_without_wandb_installed_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'llm_gym\[wandb\]'"):
        WandB(WandBConfig(), tmp_path, {}, None)
