"""Pipeline parallelism: the model's blocks cut into stages, run by a ``torch.distributed.pipelining`` schedule.

Each rank of the mesh's ``pp`` dim holds one stage (GPipe, 1F1B) or several (the interleaved schedules): a
module the model makes of its own layers (``pipeline_stage`` in the model contract), under the whole model's
parameter names, so checkpoints, optimizer state and parameter groups do not depend on the cut. The step's
micro batches are the schedule's microbatches; the loss is computed on the last stage.
"""

import inspect
import itertools
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as torch_schedules
from torch.distributed.tensor import DTensor

from llm_gym.errors import ConfigError

SCHEDULES = {
    "GPipe": "ScheduleGPipe",
    "1F1B": "Schedule1F1B",
    "Interleaved1F1B": "ScheduleInterleaved1F1B",
    "LoopedBFS": "ScheduleLoopedBFS",
    "InterleavedZeroBubble": "ScheduleInterleavedZeroBubble",
    "ZBVZeroBubble": "ScheduleZBVZeroBubble",
}
"""llm_gym's schedule names and the ``torch.distributed.pipelining.schedules`` classes that run them."""

V_SHAPED = frozenset({"ZBVZeroBubble"})
"""Schedules that place a rank's two stages in a V (rank r holds stages r and 2·pp - 1 - r), not in loops."""

SPLIT_POINTS_KEY = "parallelism.config.pipeline_split_points"


def stage_blocks(n_layer: int, num_stages: int, split_points: Sequence[int] | None) -> list[range]:
    """The blocks of each stage, in order: cut at ``split_points`` (the first block of each stage after the
    first), or evenly, the earlier stages taking one more block where ``n_layer`` does not divide (the last
    stage also computes the output head and the loss)."""
    if n_layer < num_stages:
        raise ConfigError(
            f"the model has {n_layer} blocks, fewer than the {num_stages} pipeline stages (pipeline_parallel_degree "
            "× stages per rank); lower parallelism.config.pipeline_parallel_degree or pipeline_stages_per_rank"
        )
    if split_points is None:
        base, extra = divmod(n_layer, num_stages)
        sizes = [base + (stage < extra) for stage in range(num_stages)]
        starts = list(itertools.accumulate(sizes, initial=0))
    else:
        if len(split_points) != num_stages - 1 or (split_points and split_points[-1] >= n_layer):
            raise ConfigError(
                f"{SPLIT_POINTS_KEY} ({list(split_points)}) must give {num_stages - 1} block indices below {n_layer} "
                f"for {num_stages} stages (pipeline_parallel_degree × stages per rank); fix them, or set null to "
                "spread the blocks evenly"
            )
        starts = [0, *split_points, n_layer]
    return [range(start, end) for start, end in itertools.pairwise(starts)]


def stages_of_rank(pp_rank: int, pp_degree: int, stages_per_rank: int, schedule: str) -> list[int]:
    """The stage indices rank ``pp_rank`` of the pipeline holds, in order."""
    if schedule in V_SHAPED:
        return [pp_rank, 2 * pp_degree - 1 - pp_rank]
    return [pp_rank + loop * pp_degree for loop in range(stages_per_rank)]


class PipelinedModel(nn.Module):
    """A rank's pipeline stages seen as one module with the whole model's names: ``blocks`` holds their blocks
    by index, the other layers are its own children. What the optimizer, checkpoints and gradient clipping see;
    the schedule runs the stages themselves."""

    def __init__(self, stages: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleDict()
        for stage in stages:
            for name, child in stage.named_children():
                if name == "blocks":
                    self.blocks.update(child)
                elif child is not None:
                    self.add_module(name, child)


def _stage_output(stage: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    output = stage(inputs)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"a pipeline stage must return one tensor, {type(stage).__name__} returned {type(output)}")
    return output


def parameters_of_stages(stages: dict[int, nn.Module], owner: dict[int, int]) -> dict[str, set[int]]:
    """The pipeline ranks holding each parameter, by its name (a tied embedding: the first and the last
    stage's), refusing a parameter two stages of one rank would hold (each stage is sharded on its own)."""
    holders: dict[str, set[int]] = {}
    for index, stage in sorted(stages.items()):
        for name, _ in stage.named_parameters():
            ranks = holders.setdefault(name, set())
            if owner[index] in ranks:
                raise ConfigError(
                    f"pipeline rank {owner[index]} would hold {name} in two of its stages (the model shares it "
                    "between them, as a tied embedding is shared by the first and the last stage); choose a "
                    "pipeline_schedule that puts those stages on different ranks (not ZBVZeroBubble), or untie it "
                    "(model.config.tie_embeddings: false)"
                )
            ranks.add(owner[index])
    return holders


def stage_owners(num_stages: int, degree: int, stages_per_rank: int, schedule: str) -> dict[int, int]:
    """The pipeline rank that holds each stage."""
    return {stage: rank for rank in range(degree) for stage in stages_of_rank(rank, degree, stages_per_rank, schedule)}


class Pipeline:
    """This rank's stages of the pipeline over the ``pp`` process group, and the schedule that runs them.

    ``shared`` names the parameters that several stages hold (a tied embedding, on the first and the last stage)
    with the group of ranks holding the copies at this rank's data- and tensor-parallel coordinates, and whether
    this rank's is the first copy: after each backward their gradients are summed over the group, so every copy
    takes the same update, and only the first copy counts in the gradient norm.
    """

    def __init__(
        self,
        stages: dict[int, nn.Module],
        num_stages: int,
        schedule: str,
        group: dist.ProcessGroup,
        device: torch.device,
        shared: dict[str, tuple[dist.ProcessGroup, bool]],
    ):
        self.stages, self.num_stages, self.schedule_name = stages, num_stages, schedule
        self.group, self.device = group, device
        self.holds_last_stage = num_stages - 1 in stages
        self._schedules: dict[int, torch_schedules._PipelineSchedule] = {}
        self._loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._owner = stage_owners(num_stages, dist.get_world_size(group), len(stages), schedule)
        parameters = {name: parameter for stage in stages.values() for name, parameter in stage.named_parameters()}
        self._shared = [(parameters[name], shared_group) for name, (shared_group, _) in shared.items()]
        self._copies = {id(parameters[name]) for name, (_, is_first) in shared.items() if not is_first}

    def counts_in_norm(self, parameter: nn.Parameter) -> bool:
        """False for the second and later copies of a shared parameter: its gradient is counted once."""
        return id(parameter) not in self._copies

    def _sum_shared_gradients(self) -> None:
        for parameter, group in self._shared:
            gradient = parameter.grad
            if gradient is None:
                continue
            if isinstance(gradient, DTensor):
                # Each copy's gradient in its parameter's placements (a tensor-parallel embedding's arrives
                # replicated, the output projection's sharded), so that the local tensors match.
                if gradient.placements != parameter.placements:
                    gradient = parameter.grad = gradient.redistribute(placements=parameter.placements)
                gradient = gradient.to_local()
            dist.all_reduce(gradient, group=group)

    def _schedule(self, n_microbatches: int) -> torch_schedules._PipelineSchedule:
        if n_microbatches not in self._schedules:
            pipeline_stages = [
                PipelineStage(module, index, self.num_stages, self.device, group=self.group)
                for index, module in sorted(self.stages.items())
            ]
            schedule_class = getattr(torch_schedules, SCHEDULES[self.schedule_name])
            single_stage = issubclass(schedule_class, torch_schedules.PipelineScheduleSingle)
            # The loss is summed, already scaled for the global batch: the schedule must not average it (torch
            # 2.6 never does, and has no scale_grads).
            unscaled = {"scale_grads": False} if "scale_grads" in inspect.signature(schedule_class).parameters else {}
            try:
                self._schedules[n_microbatches] = schedule_class(
                    pipeline_stages[0] if single_stage else pipeline_stages,
                    n_microbatches=n_microbatches,
                    loss_fn=self._scaled_loss,
                    **unscaled,
                )
            except ValueError as error:
                raise ConfigError(
                    f"parallelism.config.pipeline_schedule {self.schedule_name} cannot run "
                    f"{n_microbatches} microbatches (training.gradient_accumulation_steps) on "
                    f"{dist.get_world_size(self.group)} pipeline ranks: {error}"
                ) from None
        return self._schedules[n_microbatches]

    def _scaled_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._loss(logits, targets)

    def step(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        n_microbatches: int,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """Forward and backward of ``n_microbatches`` equal slices of the batch through every stage; ``loss``
        (on the last stage) gives each microbatch's value that its backward starts from, returned in order
        (empty on the other stages). Schedules may call ``loss`` beyond those, to infer shapes."""
        losses: list[torch.Tensor] = []
        self._loss = loss
        try:
            self._schedule(n_microbatches).step(inputs, target=targets, losses=losses)
        finally:
            self._loss = None
        self._sum_shared_gradients()
        return losses

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The logits of the whole batch on the rank holding the last stage (None on the others): the stages in
        order, without a schedule, each rank passing its output to the next stage's."""
        rank = dist.get_rank(self.group)
        hidden = inputs
        for index in range(self.num_stages):
            if self._owner[index] != rank:
                continue
            if index > 0 and self._owner[index - 1] != rank:
                hidden = self._receive(self._owner[index - 1])
            hidden = _stage_output(self.stages[index], hidden)
            if index < self.num_stages - 1 and self._owner[index + 1] != rank:
                self._send(hidden, self._owner[index + 1])
        return hidden if self.holds_last_stage else None

    def _global(self, pp_rank: int) -> int:
        return dist.get_global_rank(self.group, pp_rank)

    def _send(self, tensor: torch.Tensor, pp_rank: int) -> None:
        # What the receiver allocates: dims, then the shape, then the dtype as an index into _WIRE_DTYPES.
        header = torch.tensor(
            [tensor.dim(), *tensor.shape, _WIRE_DTYPES.index(tensor.dtype)], dtype=torch.int64, device=self.device
        )
        dist.send(torch.tensor([header.numel()], device=self.device), self._global(pp_rank))
        dist.send(header, self._global(pp_rank))
        dist.send(tensor.contiguous(), self._global(pp_rank))

    def _receive(self, pp_rank: int) -> torch.Tensor:
        length = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.recv(length, self._global(pp_rank))
        header = torch.zeros(int(length.item()), dtype=torch.int64, device=self.device)
        dist.recv(header, self._global(pp_rank))
        ndim, *shape, dtype = header.tolist()
        tensor = torch.empty(shape[:ndim], dtype=_WIRE_DTYPES[dtype], device=self.device)
        dist.recv(tensor, self._global(pp_rank))
        return tensor


_WIRE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32]
