"""What a checkpoint holds, as ``Stateful`` objects that DCP saves and restores in place.

Model and optimizer go through ``torch.distributed.checkpoint.state_dict``, which gives sharded
(DTensor) entries for FSDP2 and plain ones otherwise, always under the unwrapped parameter names; DCP
then reshards on load, so a checkpoint written by any number of ranks loads into any other.
"""

import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor

from llm_gym.errors import UserError
from llm_gym.parallel import collectives

# Optimizer state keyed by parameter name rather than by position in param_groups.
_OPTIMIZER_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class ModelState(Stateful):
    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """The optimizer's moments and step counts. Its hyperparameters (lr, betas, weight decay, ...) come
    from the config: the ones the optimizer holds when loading starts are put back after loading, so a
    resumed run with a changed ``optimizer.config`` trains with the new values."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        # Settings the checkpoint to load lacks (set by missing_state): left out of the load, as the config
        # gives them anyway.
        self._unsaved_settings: dict[str, Any] = {}

    def _full_state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=_OPTIMIZER_OPTIONS)

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self._full_state_dict().items() if key not in self._unsaved_settings}

    def missing_state(self, saved_keys: set[str]) -> list[str]:
        """Prepare the next load from a checkpoint that holds ``saved_keys`` (DCP's flattened keys). Returns
        the names of the state entries it lacks (``momentum_buffer``: another optimizer saved it). Settings it
        lacks (``param_groups.*``, e.g. one a newer torch release added) are not needed and are skipped."""
        current = self._full_state_dict()
        _, paths = flatten_state_dict(current)
        missing = {paths[key][0] for key in paths.keys() - saved_keys}
        self._unsaved_settings = {key: current[key] for key in missing if key.startswith("param_groups.")}
        return sorted({key.rpartition(".")[2] for key in missing - self._unsaved_settings.keys()})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        configured = [
            {key: value for key, value in group.items() if key != "params"} for group in self.optimizer.param_groups
        ]
        state_dict = {**self._unsaved_settings, **state_dict}
        self._unsaved_settings = {}
        set_optimizer_state_dict(self.model, self.optimizer, state_dict, options=_OPTIMIZER_OPTIONS)
        # The lr put back is right for the resumed step whichever of optimizer and schedule DCP loads first:
        # the schedule, stepped before, left it there; stepped after, it starts from the config's step 0.
        for group, hyperparameters in zip(self.optimizer.param_groups, configured, strict=True):
            group.update(hyperparameters)


class SchedulerState(Stateful):
    """The learning-rate schedule's position (steps taken), not its settings.

    Torch schedulers' own ``state_dict`` holds their settings too (``total_steps``, ``base_lrs``, ...), and
    loading it would overrule the config: a run resumed with a longer ``training.max_steps`` would keep the
    old schedule. Loading instead steps the freshly built, config-made schedule to the saved position, which
    repeats the uninterrupted run's arithmetic exactly and works for every ``LRScheduler``.
    """

    def __init__(self, lr_scheduler: torch.optim.lr_scheduler.LRScheduler):
        self.lr_scheduler = lr_scheduler

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.lr_scheduler.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.lr_scheduler.last_epoch != 0:
            raise RuntimeError("a schedule is restored into a freshly built one only")
        with warnings.catch_warnings():
            # Torch warns of a schedule stepped before the optimizer; here that is the point.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            saved_steps = int(state_dict["last_epoch"])
            try:
                for _ in range(saved_steps):
                    self.lr_scheduler.step()
            except ValueError as error:  # e.g. OneCycleLR stepped past its total_steps
                raise UserError(
                    f"lr_scheduler: the configured schedule cannot reach the checkpoint's step {saved_steps} "
                    f"({error}); lengthen it, e.g. its total_steps"
                ) from error


def _rank_key(rank: int) -> str:
    return f"rank_{rank}"


class RNGState(Stateful):
    """Each rank's torch generators (CPU, and the current CUDA device's) under that rank's own key.

    With an unchanged world size every rank gets its own streams back exactly. A rank the checkpoint
    has no entry for (the world grew) takes rank 0's streams; ``choose_source`` decides before loading.
    """

    def __init__(self) -> None:
        # Set by choose_source for the next load only: (rank whose entry to read, devices it has).
        self._source: tuple[int, tuple[str, ...]] | None = None

    @staticmethod
    def _devices() -> tuple[str, ...]:
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def state_dict(self) -> dict[str, Any]:
        source_rank, devices = self._source or (collectives.rank(), self._devices())
        getters = {"cpu": torch.get_rng_state, "cuda": torch.cuda.get_rng_state}
        return {_rank_key(source_rank): {device: getters[device]() for device in devices}}

    def choose_source(self, saved_keys: set[str]) -> str | None:
        """Pick the entry to restore among ``saved_keys`` (``rank_<r>.<device>``); say so if not our own."""
        rank = collectives.rank()
        saved_ranks = {key.split(".")[0] for key in saved_keys}
        source_rank, note = rank, None
        if _rank_key(rank) not in saved_ranks:
            if _rank_key(0) not in saved_ranks:
                raise UserError("the checkpoint has no random-number-generator state for rank 0")
            source_rank = 0
            note = f"rank {rank}: the checkpoint has no RNG state for this rank (world size changed); using rank 0's"
        devices = tuple(device for device in self._devices() if f"{_rank_key(source_rank)}.{device}" in saved_keys)
        self._source = (source_rank, devices)
        return note

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        setters = {"cpu": torch.set_rng_state, "cuda": torch.cuda.set_rng_state}
        (generator_states,) = state_dict.values()
        for device, generator_state in generator_states.items():
            setters[device](generator_state)
        self._source = None


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: Stateful,
    progress: Stateful,
) -> dict[str, Stateful]:
    """Everything an exact resume needs, under the names checkpoints use: counters and state, while the
    hyperparameters of optimizer and schedule come from the config of the run that loads it.

    Loader and counters are stored as they are: their ``state_dict`` must be the same on every rank (one
    copy is kept) and hold only tensors, numbers, strings, lists and dicts (read with weights_only).
    """
    return {
        "model": ModelState(model),
        "optimizer": OptimizerState(model, optimizer),
        "lr_scheduler": SchedulerState(lr_scheduler),
        "dataloader": train_loader,
        "progress": progress,
        "rng": RNGState(),
    }


class NonFiniteWeightsError(UserError):
    """The model holds NaN or infinite weights; such a model is never written to a checkpoint."""


@torch.no_grad()
def assert_finite(model: nn.Module) -> None:
    """Raise ``NonFiniteWeightsError`` on every rank if any rank's shard of any parameter is not finite."""
    bad = []
    for name, parameter in model.named_parameters():
        local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
        # min and max propagate NaN and show ±inf, in one pass without a mask as large as the weights.
        if local.numel() and not all(bool(torch.isfinite(extreme)) for extreme in torch.aminmax(local.detach())):
            bad.append(name)
    if collectives.any_rank(bool(bad)):
        names = sorted({name for names in collectives.all_gather_objects(bad) for name in names})
        raise NonFiniteWeightsError(
            f"refusing to save a checkpoint: non-finite values in {', '.join(names[:5])}"
            + (f" and {len(names) - 5} more parameters" if len(names) > 5 else "")
        )
