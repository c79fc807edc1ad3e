"""Saving: when to save, and the write → rename → ``latest`` → prune protocol that keeps checkpoints whole.

A checkpoint is written into ``.tmp_step_<N>/`` by every rank, completed with ``llm_gym_meta.json``,
renamed to ``step_<N>/`` and only then named in ``latest``; older ones are pruned after that. A run killed
at any point leaves ``latest`` naming a complete checkpoint (or no ``latest`` at all). A save in the
background (``checkpointing.async``) is written by DCP's thread and goes through the same steps from the main
thread once every rank has written it: until then the previous checkpoint stays ``latest``.
"""

import functools
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import BlockingAsyncStager
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils._pytree import tree_map_only

from llm_gym.checkpointing.integrity import file_fingerprints, gather_fingerprints, this_ranks_fingerprints
from llm_gym.checkpointing.state import ModelState, assert_finite
from llm_gym.checkpointing.storage import DCP_METADATA_FILE, read_dcp_metadata
from llm_gym.checkpointing.strategies import (
    CheckpointStrategy,
    KeepLast,
    KeepLastConfig,
    SaveAtEnd,
    SaveEveryNSteps,
    SaveEveryNStepsConfig,
)
from llm_gym.errors import UserError
from llm_gym.outputs import writing
from llm_gym.parallel import collectives

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
META_FILE = "llm_gym_meta.json"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp_"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step}"


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new one, never a partial file."""
    partial = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with writing(path), partial.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except UserError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    _fsync_dir(path.parent)


def _written(partial_dir: Path) -> list[str]:
    """The files DCP wrote into ``partial_dir``, from its metadata."""
    # Read back rather than use dcp.save's return value: torch 2.11 returns it without storage_data.
    dcp_metadata = read_dcp_metadata(partial_dir)
    return sorted({info.relative_path for info in dcp_metadata.storage_data.values()} | {DCP_METADATA_FILE})


@functools.cache
def _staging_shares_host_tensors() -> bool:
    """Whether DCP's staging hands a tensor already in host memory to its writer thread as itself, where the
    next optimizer step would change it mid-write (torch 2.6 does; later releases copy it)."""
    tensor = torch.zeros(1)
    return BlockingAsyncStager().stage({"tensor": tensor})["tensor"].data_ptr() == tensor.data_ptr()


def _with_host_tensors_copied(state: dict[str, Stateful]) -> dict[str, Any]:
    """``state`` as it is now, its tensors in host memory cloned: what DCP's staging does not copy itself."""
    materialized = {key: value.state_dict() if isinstance(value, Stateful) else value for key, value in state.items()}
    return tree_map_only(torch.Tensor, _clone_if_in_host_memory, materialized)


def _clone_if_in_host_memory(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.device.type == "cpu" else tensor


class _BackgroundSave:
    """A save DCP writes from its thread; a thread of ours then fingerprints this rank's share of the files."""

    def __init__(self, partial_dir: Path, final_dir: Path, metadata: dict[str, Any], written: Future) -> None:
        self.partial_dir, self.final_dir, self.metadata = partial_dir, final_dir, metadata
        self._fingerprints: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._finish, args=(written,), name="llm_gym checkpoint", daemon=True)
        self._thread.start()

    def _finish(self, written: Future) -> None:
        try:
            written.result()
            self._fingerprints = this_ranks_fingerprints(self.partial_dir, _written(self.partial_dir))
        except BaseException as error:  # handed to the main thread, which raises it
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[dict[str, Any], BaseException | None]:
        self._thread.join()
        return self._fingerprints, self._error


def first_failure(error: BaseException) -> tuple[int | None, BaseException]:
    """The first failing rank and its own exception, which DCP gathers from every rank into a
    ``CheckpointException``; ``(None, error)`` for any other exception."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, (exception, _) = next(iter(error.failures.items()))
        return rank, exception
    return None, error


class CheckpointManager:
    """Saves every ``every_n_steps`` steps (0 = only at the end) and keeps the ``keep_last`` newest (-1 = all),
    plus whatever the extra ``strategies`` ask to save or protect."""

    def __init__(
        self,
        checkpoint_root: Path,
        every_n_steps: int,
        keep_last: int,
        strategies: Sequence[CheckpointStrategy] = (),
        in_background: bool = False,
    ):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if keep_last == 0 or keep_last < -1:
            raise ValueError(f"keep_last must be -1 (keep all) or at least 1, got {keep_last}")
        self.checkpoint_root = Path(checkpoint_root)
        self.strategies = [
            SaveEveryNSteps(SaveEveryNStepsConfig(every_n_steps=every_n_steps)),
            SaveAtEnd(),
            KeepLast(KeepLastConfig(count=keep_last)),
            *strategies,
        ]
        self.in_background = in_background
        self._background: _BackgroundSave | None = None
        self._writer_group: dist.ProcessGroup | None = None
        """A gloo group for DCP's exchanges from its thread, apart from the training's."""
        self._poll_group: dist.ProcessGroup | None = None
        """Another for ``poll``'s, from the main thread: two threads on one group would mix their exchanges."""

    def should_save(self, step: int, is_final: bool) -> bool:
        return any(strategy.should_save(step, is_final) for strategy in self.strategies)

    def save(self, step: int, state: dict[str, Stateful], metadata: dict[str, Any]) -> Path:
        """Write a complete checkpoint of ``state`` for ``step``; every rank calls this. Returns its directory.

        With ``in_background``, this returns once the state is copied to host memory (the stall of a save) and
        writes it from a thread; ``poll`` (every step) and ``wait`` publish it when every rank has written."""
        self.wait()
        for value in state.values():
            if isinstance(value, ModelState):
                assert_finite(value.model)
        final_dir = self.checkpoint_root / step_dir_name(step)
        partial_dir = self.checkpoint_root / f"{TMP_PREFIX}{final_dir.name}"
        if collectives.rank() == 0:
            self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial_dir, ignore_errors=True)
        collectives.barrier()
        metadata = {**metadata, "step": step}
        if not self.in_background:
            try:
                with collectives.single_process_quietly():
                    dcp.save(state, storage_writer=FileSystemWriter(partial_dir))
            except CheckpointException as error:
                self._refuse_failed_write(error, partial_dir, final_dir)
            self._complete(partial_dir, final_dir, metadata, file_fingerprints(partial_dir, _written(partial_dir)))
            return final_dir
        if collectives.world_size() == 1:
            collectives.silence_single_process_warning()
        elif self._writer_group is None:
            self._writer_group, self._poll_group = dist.new_group(backend="gloo"), dist.new_group(backend="gloo")
        if _staging_shares_host_tensors():
            state = _with_host_tensors_copied(state)
        written = dcp.async_save(state, storage_writer=FileSystemWriter(partial_dir), process_group=self._writer_group)
        self._background = _BackgroundSave(partial_dir, final_dir, metadata, written)
        return final_dir

    def poll(self) -> None:
        """Publish the save in the background once every rank has written it; called by every rank after every
        step, it costs one exchange on the host while a save is being written, none otherwise."""
        background = self._background
        if background is not None and not collectives.any_rank(not background.done(), group=self._poll_group):
            self.wait()

    def wait(self) -> None:
        """Wait for the save in the background, if any, and publish it; every rank calls this."""
        background, self._background = self._background, None
        if background is None:
            return
        fingerprints, error = background.result()
        failures = [failure for failure in collectives.all_gather_objects(error is not None) if failure]
        if failures:
            if isinstance(error, CheckpointException):
                self._refuse_failed_write(error, background.partial_dir, background.final_dir)
            raise RuntimeError(f"a checkpoint save in the background failed on {len(failures)} rank(s)") from error
        fingerprints = gather_fingerprints(fingerprints)
        self._complete(background.partial_dir, background.final_dir, background.metadata, fingerprints)

    def _refuse_failed_write(self, error: CheckpointException, partial_dir: Path, final_dir: Path) -> None:
        # Every rank holds the same gathered failures; a file one of them could not write is the user's to fix.
        failed_rank, cause = first_failure(error)
        if not isinstance(cause, OSError):
            raise error
        if collectives.rank() == 0:
            shutil.rmtree(partial_dir, ignore_errors=True)  # what was written, so the disk gets its room back
        where = f" (rank {failed_rank})" if collectives.world_size() > 1 else ""
        raise UserError(
            f"cannot write checkpoint {final_dir}{where}: {cause.strerror or cause}; the earlier checkpoints "
            f"and {LATEST_FILE} are unchanged"
        ) from error

    def _complete(
        self, partial_dir: Path, final_dir: Path, metadata: dict[str, Any], fingerprints: dict[str, Any]
    ) -> None:
        if collectives.rank() == 0:
            meta = {**metadata, "format_version": FORMAT_VERSION, "files": fingerprints}
            write_file_atomically(partial_dir / META_FILE, json.dumps(meta, indent=1, default=str))
            self._publish(partial_dir, final_dir)
            self._prune(keep=final_dir)
        collectives.barrier()

    def _publish(self, partial_dir: Path, final_dir: Path) -> None:
        if final_dir.exists():  # saved again at the same step (a rerun): the new one replaces it
            self._point_latest_away_from(final_dir)
            replaced = final_dir.with_name(f"{TMP_PREFIX}replaced_{final_dir.name}")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final_dir, replaced)
        os.replace(partial_dir, final_dir)
        _fsync_dir(self.checkpoint_root)
        write_file_atomically(self.checkpoint_root / LATEST_FILE, final_dir.name + "\n")
        logger.info("saved checkpoint %s", final_dir)

    def step_dirs(self) -> list[tuple[int, Path]]:
        """The published ``step_<N>`` directories, by step."""
        return sorted(
            (_step_of(entry), entry)
            for entry in self.checkpoint_root.iterdir()
            if _STEP_DIR.match(entry.name) and entry.is_dir()
        )

    def _point_latest_away_from(self, checkpoint_dir: Path) -> None:
        """If ``latest`` names ``checkpoint_dir``, which is about to be moved aside and replaced, name another
        complete checkpoint until the replacement is in place, so that a run killed in between still
        resumes: the newest older one (this run resumed from it), else the newest of all."""
        latest = self.checkpoint_root / LATEST_FILE
        if not latest.is_file() or latest.read_text().strip() != checkpoint_dir.name:
            return
        replaced_step = _step_of(checkpoint_dir)
        others = [(step, entry) for step, entry in self.step_dirs() if step != replaced_step]
        older = [entry for step, entry in others if step < replaced_step]
        if substitutes := older or [entry for _, entry in others]:
            write_file_atomically(latest, substitutes[-1].name + "\n")

    def _prune(self, keep: Path) -> None:
        """Delete unfinished saves, and complete checkpoints older than ``keep`` that no strategy protects.

        Checkpoints numbered above ``keep`` belong to a run this one resumed from an earlier point;
        they are left alone.
        """
        for entry in self.checkpoint_root.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
        kept_step = _step_of(keep)
        complete = [(step, entry) for step, entry in self.step_dirs() if step <= kept_step]
        steps = [step for step, _ in complete]
        doomed_entries = [
            entry
            for index, (step, entry) in enumerate(complete[:-1])
            if not any(strategy.protects(step, steps[index + 1 :]) for strategy in self.strategies)
        ]
        for entry in doomed_entries:
            # Renamed first, so that a run killed mid-delete leaves no half checkpoint under a valid name.
            doomed = entry.with_name(f"{TMP_PREFIX}deleting_{entry.name}")
            os.replace(entry, doomed)
            shutil.rmtree(doomed)


def _step_of(checkpoint_dir: Path) -> int:
    return int(_STEP_DIR.match(checkpoint_dir.name).group(1))
