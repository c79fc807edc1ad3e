"""A run killed (SIGKILL) in the middle of a save leaves ``latest`` naming a complete, loadable checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from checkpoint_toys import Toy, make_model

import llm_gym
from llm_gym.checkpointing import CheckpointManager, load_checkpoint, resolve_resume

# Saves step 1, then stops inside the save of step 2 after every shard is written but before the
# checkpoint is completed and published, and waits there to be killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from checkpoint_toys import Toy, make_model
    import llm_gym.checkpointing.manager as manager_module

    root, marker = Path(sys.argv[1]), Path(sys.argv[2])
    toy = Toy(make_model(width=1024))  # ~12 MB of weights and optimizer state
    toy.train(1)
    manager = manager_module.CheckpointManager(root, every_n_steps=1, keep_last=1)
    manager.save(1, toy.state(), {"world_size": 1})
    fingerprints = manager_module.file_fingerprints

    def stall(directory, names):
        marker.write_text(directory.name)
        time.sleep(120)
        return fingerprints(directory, names)

    manager_module.file_fingerprints = stall
    toy.train(1)
    manager.save(2, toy.state(), {"world_size": 1})
    """
)


@pytest.mark.slow
def test_sigkill_during_save_leaves_latest_loadable(tmp_path):
    root, marker = tmp_path / "checkpoints", tmp_path / "stalled"
    python_path = os.pathsep.join([str(Path(llm_gym.__file__).parents[1]), str(Path(__file__).parent)])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(marker)], env={**os.environ, "PYTHONPATH": python_path}
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the child never reached the middle of its second save"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()

    assert marker.read_text() == ".tmp_step_2"
    assert any((root / ".tmp_step_2").glob("*.distcp")), "the kill should land after the shards were written"
    assert (root / "latest").read_text().strip() == "step_1"
    checkpoint = resolve_resume("auto", root)
    assert checkpoint == root / "step_1"
    assert load_checkpoint(checkpoint, Toy(make_model(width=1024)).state())["step"] == 1

    CheckpointManager(root, every_n_steps=1, keep_last=1).save(2, Toy(make_model(width=1024)).state(), {})
    assert sorted(path.name for path in root.iterdir()) == ["latest", "step_2"]
