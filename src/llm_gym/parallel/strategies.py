"""Data-parallel strategies as registry components: FSDP2, HSDP, DDP, or none.

Each strategy wraps a model for its mesh and answers the questions the training step asks: how many
data-parallel ranks there are, how to skip gradient sync between micro batches, how to clip by the global
gradient norm, and under which autocast the forward runs.
"""

import contextlib
import functools
import itertools
from collections.abc import Iterable
from enum import Enum
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ParallelStyle, loss_parallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel

from llm_gym.errors import UserError
from llm_gym.models.contract import APPLY_CONTEXT_PARALLEL, PIPELINE_STAGE, TENSOR_PARALLEL_PLAN, LanguageModel
from llm_gym.parallel.context_parallel import UlyssesExchange
from llm_gym.parallel.distributed import DistributedEnvironment, torch_release
from llm_gym.parallel.pipeline import (
    Pipeline,
    PipelinedModel,
    parameters_of_stages,
    stage_blocks,
    stage_owners,
    stages_of_rank,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MixedPrecisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    param_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute dtype of parameters; auto = bfloat16 on GPU, float32 on CPU"
    )
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"


def _compute_dtype(mixed_precision: MixedPrecisionConfig, device: torch.device) -> torch.dtype:
    if mixed_precision.param_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[mixed_precision.param_dtype]


class ParallelismStrategy:
    supports_meta_device_init = True
    """Whether ``parallelize`` accepts a model on the meta device, materialised only afterwards."""
    tensor_parallel_degree = 1
    """Ranks each layer is split over (the mesh's innermost ``tp`` dim); 1 = no tensor parallelism."""
    context_parallel_degree = 1
    """Ranks each sequence is split over (the ``cp`` dim, outside ``tp``); 1 = no context parallelism."""
    pipeline_parallel_degree = 1
    """Ranks the blocks are cut over, one pipeline stage (or several) each (the outermost ``pp`` dim)."""

    def __init__(self, config: "_StrategyConfig", env: DistributedEnvironment):
        self.env = env
        self.mixed_precision = config.mixed_precision
        self.compute_dtype = _compute_dtype(self.mixed_precision, env.device)

    @property
    def model_parallel_degree(self) -> int:
        """Ranks that together hold one replica of the model and work on the same samples: tp × cp × pp."""
        return self.tensor_parallel_degree * self.context_parallel_degree * self.pipeline_parallel_degree

    @property
    def data_parallel_size(self) -> int:
        return self.env.world_size // self.model_parallel_degree

    @property
    def data_parallel_rank(self) -> int:
        # The mesh is pp, dp, cp, tp from outermost to innermost: the ranks of one TP and CP group are
        # consecutive and read one data-parallel rank's samples, and each pipeline stage repeats the dp ranks.
        return (self.env.rank // (self.tensor_parallel_degree * self.context_parallel_degree)) % self.data_parallel_size

    @property
    def context_parallel_rank(self) -> int:
        """Which chunk of each sequence this rank holds (its ``cp`` coordinate; 0 without context parallelism)."""
        return (self.env.rank // self.tensor_parallel_degree) % self.context_parallel_degree

    def context_chunk(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's chunk of ``values [B, T, ...]`` along T: positions ``[c·T/cp, (c+1)·T/cp)`` for chunk
        ``c``; ``values`` itself without context parallelism."""
        if self.context_parallel_degree == 1:
            return values
        return values.chunk(self.context_parallel_degree, dim=1)[self.context_parallel_rank]

    @property
    def token_parallel_size(self) -> int:
        """Ranks holding different target tokens of one stage's step, over which gradients are averaged: the
        data-parallel ranks, each with its context-parallel chunks."""
        return self.data_parallel_size * self.context_parallel_degree

    @property
    def token_group(self) -> dist.ProcessGroup | None:
        """The ``token_parallel_size`` ranks of this rank's tp coordinate and stage, for summing losses and token
        counts; None = all ranks."""
        return None

    pipeline: Pipeline | None = None
    """This rank's pipeline stages and their schedule, once ``parallelize`` has cut the model; None without
    pipeline parallelism."""

    def sum_over_stages(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the pipeline's stages, in place (a loss is on the last stage only)."""
        return values

    def loss_context(self) -> contextlib.AbstractContextManager:
        """Context for the loss and its backward: ``loss_parallel`` where the logits are split by vocabulary."""
        return contextlib.nullcontext()

    def tensor_parallel_plan(self, model: LanguageModel) -> dict[str, ParallelStyle]:
        """The model's plan for this degree, empty without tensor parallelism; raises ``ConfigError`` where the
        model cannot be split so."""
        if self.tensor_parallel_degree == 1:
            return {}
        return getattr(model, TENSOR_PARALLEL_PLAN)(self.tensor_parallel_degree)

    def apply_tensor_parallel(self, model: LanguageModel) -> None:
        """Split the model's layers over the ``tp`` ranks by its plan, in place, before its blocks are wrapped
        (the plan names the model's own modules); nothing without tensor parallelism."""

    def apply_context_parallel(self, model: LanguageModel) -> None:
        """Hand the model the all-to-alls of its context-parallel group (its ``apply_context_parallel``), in place,
        before its blocks are wrapped; raises ``ConfigError`` where its heads cannot be split so; nothing without
        context parallelism."""

    def parallelize(self, model: LanguageModel) -> nn.Module:
        raise NotImplementedError

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Context for one micro batch's backward; gradients are reduced only on the last one."""
        return contextlib.nullcontext()

    def forward_context(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.compute_dtype)

    @torch.no_grad()
    def clip_grad_norm_(self, model: nn.Module, max_norm: float | None) -> torch.Tensor:
        """Global L2 norm of all gradients (across shards and ranks), clipping to ``max_norm`` if given.

        Gradients are first put in their parameters' placements: under tensor parallelism a replicated
        parameter used on sequence-sharded activations (a norm's weight) gets its gradient as a partial sum
        over the TP ranks, which torch 2.11's optimizers then step on wrongly (each moment off by a factor)."""
        parameters = [p for p in model.parameters() if p.grad is not None]
        for parameter in parameters:
            if isinstance(parameter.grad, DTensor) and parameter.grad.placements != parameter.placements:
                parameter.grad = parameter.grad.redistribute(placements=parameter.placements)
        counted = [p.grad for p in parameters if self.pipeline is None or self.pipeline.counts_in_norm(p)]
        total_norm = torch.nn.utils.get_total_norm(counted, norm_type=2.0)
        if isinstance(total_norm, DTensor):
            total_norm = total_norm.full_tensor()
        total_norm = self.sum_over_stages(total_norm.square()).sqrt()
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
        return total_norm


class _StrategyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mixed_precision: MixedPrecisionConfig = Field(default_factory=MixedPrecisionConfig)


class NoParallelismConfig(_StrategyConfig):
    @model_validator(mode="after")
    def _gradients_stay_float32(self) -> "NoParallelismConfig":
        # Autocast computes in param_dtype but keeps float32 parameters, so gradients are float32 here.
        if self.mixed_precision.reduce_dtype != "float32":
            raise ValueError(
                "mixed_precision.reduce_dtype is for FSDP2 and HSDP, which reduce gradients in it; with this "
                "strategy the parameters, and so their gradients, stay float32"
            )
        return self


class NoParallelism(ParallelismStrategy):
    """One process, no wrapping: the plain PyTorch model."""

    def __init__(self, config: NoParallelismConfig, env: DistributedEnvironment):
        if env.world_size != 1:
            raise UserError(
                f"parallelism NoParallelism runs on one process, but the world size is {env.world_size}; "
                "use FSDP2, HSDP or DDP under torchrun"
            )
        super().__init__(config, env)

    def parallelize(self, model: LanguageModel) -> nn.Module:
        return model


class DDPConfig(NoParallelismConfig):
    pass


class DDP(ParallelismStrategy):
    """Replicated parameters, gradients all-reduced (``DistributedDataParallel``)."""

    # DistributedDataParallel broadcasts rank 0's weights when it wraps the model: a meta model has none.
    supports_meta_device_init = False

    def parallelize(self, model: LanguageModel) -> nn.Module:
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if enabled else model.no_sync()


# torch 2.6 has no CPU stream events for FSDP2's all-gather, and 2.7 and 2.8 sum gloo's reduce-scatter where
# they mean to average it (gradients world-size times too large), so sharding over gloo needs 2.9.
GLOO_SHARDING_MIN_TORCH = (2, 9)


# Pipelining is tested on torch 2.13; on older releases llm_gym's pipeline runs failed (torch 2.6: a rank hangs in
# its schedule; 2.11: a rank exits during the first step).
PIPELINING_MIN_TORCH = (2, 13)


def _check_gloo_sharding_supported(strategy: str, env: DistributedEnvironment) -> None:
    if env.world_size > 1 and env.device.type == "cpu" and torch_release() < GLOO_SHARDING_MIN_TORCH:
        minimum = ".".join(map(str, GLOO_SHARDING_MIN_TORCH))
        raise UserError(
            f"parallelism {strategy} on CPU (gloo) needs torch >= {minimum}, this is torch {torch.__version__}; "
            "upgrade torch, or use parallelism DDP on CPU"
        )


class PipelineSchedule(str, Enum):
    """``torch.distributed.pipelining``'s schedules: one stage per rank (GPipe, 1F1B) or several (the rest)."""

    GPIPE = "GPipe"
    ONE_F_ONE_B = "1F1B"
    INTERLEAVED_1F1B = "Interleaved1F1B"
    LOOPED_BFS = "LoopedBFS"
    INTERLEAVED_ZERO_BUBBLE = "InterleavedZeroBubble"
    ZBV_ZERO_BUBBLE = "ZBVZeroBubble"

    @property
    def stages_per_rank(self) -> int | None:
        """The stages each rank holds, where the schedule fixes it (None: 2 or more, 2 by default)."""
        return {"GPipe": 1, "1F1B": 1, "ZBVZeroBubble": 2}.get(self.value)


class FSDP2Config(_StrategyConfig):
    reshard_after_forward: bool = Field(
        True, description="free gathered parameters after forward (less memory, one more all-gather in backward)"
    )
    tensor_parallel_degree: int = Field(
        1,
        ge=1,
        description="ranks each layer is split over (tensor parallel, sequence parallel between blocks): the "
        "innermost mesh dim",
    )
    context_parallel_degree: int = Field(
        1,
        ge=1,
        description="ranks each sequence is split over (context parallel, all-to-all around attention): the mesh "
        "dim outside tp",
    )
    pipeline_parallel_degree: int = Field(
        1,
        ge=1,
        description="ranks the blocks are cut over (pipeline parallel): the outermost mesh dim; the data-parallel "
        "degree is the world size ÷ (tp × cp × pp)",
    )
    pipeline_schedule: PipelineSchedule = Field(
        PipelineSchedule.ONE_F_ONE_B,
        description="with pipeline_parallel_degree > 1: GPipe, 1F1B, Interleaved1F1B, LoopedBFS, "
        "InterleavedZeroBubble or ZBVZeroBubble; the step's micro batches are the pipeline's microbatches",
    )
    pipeline_stages_per_rank: int | None = Field(
        None,
        ge=1,
        description="stages each rank holds: 1 for GPipe and 1F1B, 2 for ZBVZeroBubble, 2 or more for the other "
        "interleaved schedules; null = the schedule's own (2 where it takes several)",
    )
    pipeline_split_points: list[int] | None = Field(
        None,
        description="the indices of the blocks that begin the 2nd, 3rd, ... stage (pp × stages per rank - 1 "
        "increasing indices); null = blocks spread evenly, the earlier stages taking any remainder",
    )

    @model_validator(mode="after")
    def _pipeline_stages_fit_the_schedule(self) -> "FSDP2Config":
        schedule, requested = self.pipeline_schedule, self.pipeline_stages_per_rank
        fixed = schedule.stages_per_rank
        if requested is not None and fixed is not None and requested != fixed:
            raise ValueError(
                f"pipeline_stages_per_rank ({requested}): the {schedule.value} schedule runs {fixed} stage"
                f"{'s' if fixed > 1 else ''} per rank; set pipeline_stages_per_rank: {fixed} (or null), or choose a "
                f"schedule for {requested} stages per rank ({_schedules_for(requested)})"
            )
        if requested == 1 and fixed is None:
            raise ValueError(
                f"pipeline_stages_per_rank: 1 cannot run the interleaved schedule {schedule.value}, which holds "
                "several stages per rank; set 2 or more, or choose GPipe or 1F1B"
            )
        points = self.pipeline_split_points
        if points is not None and (
            any(point < 1 for point in points) or any(a >= b for a, b in itertools.pairwise(points))
        ):
            raise ValueError(
                f"pipeline_split_points ({points}) must be increasing block indices above 0 (the first block of "
                "each stage after the first)"
            )
        return self

    @property
    def stages_per_rank(self) -> int:
        return self.pipeline_stages_per_rank or self.pipeline_schedule.stages_per_rank or 2


def _schedules_for(stages_per_rank: int) -> str:
    """The schedules that run ``stages_per_rank`` stages per rank."""
    return ", ".join(
        schedule.value
        for schedule in PipelineSchedule
        if schedule.stages_per_rank == stages_per_rank or (schedule.stages_per_rank is None and stages_per_rank > 1)
    )


class FSDP2(ParallelismStrategy):
    """Fully sharded data parallel (``fully_shard``) per transformer block and at the root, composed with tensor,
    context and pipeline parallelism on one ``DeviceMesh`` (docs/parallelism.md).

    On one rank there is nothing to shard, and FSDP2's gather/scatter copies would only cost time
    (about 3% of a CPU step, benchmarks/training_overhead.py), so the model runs unwrapped.
    """

    def __init__(self, config: FSDP2Config, env: DistributedEnvironment):
        self.tensor_parallel_degree = config.tensor_parallel_degree
        self.context_parallel_degree = config.context_parallel_degree
        self.pipeline_parallel_degree = config.pipeline_parallel_degree
        degrees = {
            "tensor_parallel_degree": config.tensor_parallel_degree,
            "context_parallel_degree": config.context_parallel_degree,
            "pipeline_parallel_degree": config.pipeline_parallel_degree,
        }
        if env.world_size % self.model_parallel_degree:
            above_one = {key: degree for key, degree in degrees.items() if degree > 1}
            named = (
                " × ".join(f"{key} {degree}" for key, degree in above_one.items()) + f" = {self.model_parallel_degree}"
                if len(above_one) > 1
                else "".join(f"{key} ({degree})" for key, degree in above_one.items())
            )
            raise UserError(
                f"parallelism.config.{named} must divide the world size {env.world_size}; launch a multiple of "
                f"{self.model_parallel_degree} ranks, or choose degrees whose product divides {env.world_size}"
            )
        if self.pipeline_parallel_degree > 1 and torch_release() < PIPELINING_MIN_TORCH:
            minimum = ".".join(map(str, PIPELINING_MIN_TORCH))
            raise UserError(
                f"parallelism.config.pipeline_parallel_degree > 1 needs torch >= {minimum}, this is torch "
                f"{torch.__version__}; upgrade torch, or set pipeline_parallel_degree: 1"
            )
        super().__init__(config, env)
        self.reshard_after_forward = config.reshard_after_forward
        self.shard_degree = self.data_parallel_size
        self.pipeline_schedule = config.pipeline_schedule
        self.pipeline_stages_per_rank = config.stages_per_rank if self.pipeline_parallel_degree > 1 else 1
        self.pipeline_split_points = config.pipeline_split_points
        self._mesh: DeviceMesh | None = None

    def mesh_shape(self) -> dict[str, int]:
        """The mesh's dims and their degrees, outermost first: ``pp``, the data-parallel dims, ``cp``, ``tp``
        (each model-parallel dim only where its degree is above 1)."""
        pipeline = {"pp": self.pipeline_parallel_degree} if self.pipeline_parallel_degree > 1 else {}
        context = {"cp": self.context_parallel_degree} if self.context_parallel_degree > 1 else {}
        tensor = {"tp": self.tensor_parallel_degree} if self.tensor_parallel_degree > 1 else {}
        return {**pipeline, **self._data_parallel_shape(), **context, **tensor}

    def _data_parallel_shape(self) -> dict[str, int]:
        return {"dp_shard": self.shard_degree}

    def device_mesh(self) -> DeviceMesh:
        """The run's one mesh, made on first use (it creates process groups, on every rank alike)."""
        if self._mesh is None:
            shape = self.mesh_shape()
            self._mesh = init_device_mesh(self.env.device.type, tuple(shape.values()), mesh_dim_names=tuple(shape))
        return self._mesh

    @functools.cached_property
    def _sharding_mesh(self) -> DeviceMesh:
        """The dims FSDP2 shards (HSDP: replicates and shards) over: the data-parallel dims, with ``cp`` folded
        into ``dp_shard`` (its ranks hold other tokens of the same samples, so their gradients are averaged too)."""
        mesh = self.device_mesh()
        if self.model_parallel_degree == 1:
            return mesh
        data_parallel = tuple(self._data_parallel_shape())
        if self.context_parallel_degree == 1:
            return mesh[data_parallel]
        shard = mesh[("dp_shard", "cp")]._flatten("dp_shard_cp")
        if "dp_replicate" not in data_parallel:
            return shard
        return mesh[("dp_replicate", "dp_shard_cp")]

    @functools.cached_property
    def token_group(self) -> dist.ProcessGroup | None:
        # Made once: the train step sums over it twice a step, and flattening dims makes a group.
        if self.tensor_parallel_degree == 1 and self.pipeline_parallel_degree == 1:
            return None
        mesh = self._sharding_mesh
        return (mesh if mesh.ndim == 1 else mesh._flatten()).get_group()

    @property
    def shards(self) -> bool:
        return self.token_parallel_size > 1

    def apply_tensor_parallel(self, model: LanguageModel) -> None:
        if self.tensor_parallel_degree == 1:
            return
        parallelize_module(model, self.device_mesh()["tp"], self.tensor_parallel_plan(model))

    def apply_context_parallel(self, model: LanguageModel) -> None:
        if self.context_parallel_degree == 1:
            return
        exchange = UlyssesExchange(
            self.context_parallel_degree,
            self.context_parallel_rank,
            self.tensor_parallel_degree,
            lambda: self.device_mesh()["cp"].get_group(),
        )
        getattr(model, APPLY_CONTEXT_PARALLEL)(exchange)

    def loss_context(self) -> contextlib.AbstractContextManager:
        return loss_parallel() if self.tensor_parallel_degree > 1 else contextlib.nullcontext()

    def pipeline_stage_blocks(self, model: LanguageModel) -> list[range]:
        """The blocks of every pipeline stage, in order (one stage, all blocks, without pipeline parallelism);
        raises ``ConfigError`` where the model has fewer blocks than stages."""
        num_stages = self.pipeline_parallel_degree * self.pipeline_stages_per_rank
        return stage_blocks(model.n_layer, num_stages, self.pipeline_split_points)

    def pipeline_stages(self, model: LanguageModel, every_stage: bool = False) -> dict[int, nn.Module]:
        """This rank's stages (or ``every_stage``, for validation), by index, cut by the model's own hook."""
        blocks = self.pipeline_stage_blocks(model)
        indices = range(len(blocks))
        if not every_stage:
            pp_rank = self.device_mesh()["pp"].get_local_rank()
            indices = stages_of_rank(
                pp_rank, self.pipeline_parallel_degree, self.pipeline_stages_per_rank, self.pipeline_schedule.value
            )
        cut = getattr(model, PIPELINE_STAGE)
        return {index: cut(blocks[index].start, blocks[index].stop) for index in indices}

    def parallelize(self, model: LanguageModel) -> nn.Module:
        if self.pipeline_parallel_degree == 1:
            self._shard(model)
            return model
        stages = self.pipeline_stages(model)
        shared = self._shared_parameter_groups(model)
        for stage in stages.values():
            self._shard(stage)
        _release_layers_outside(model, stages.values())
        pp_group = self.device_mesh()["pp"].get_group()
        num_stages = self.pipeline_parallel_degree * self.pipeline_stages_per_rank
        self.pipeline = Pipeline(stages, num_stages, self.pipeline_schedule.value, pp_group, self.env.device, shared)
        return PipelinedModel(list(stages.values()))

    def pipeline_holders(self, model: LanguageModel) -> dict[str, set[int]]:
        """The pipeline ranks holding each parameter, by name; raises ``ConfigError`` where one rank would hold
        a parameter in two of its stages."""
        stages = self.pipeline_stages(model, every_stage=True)
        owners = stage_owners(
            len(stages), self.pipeline_parallel_degree, self.pipeline_stages_per_rank, self.pipeline_schedule.value
        )
        return parameters_of_stages(stages, owners)

    def _shared_parameter_groups(self, model: LanguageModel) -> dict[str, tuple[dist.ProcessGroup, bool]]:
        """For each parameter several pipeline ranks hold, the group of its copies at this rank's other mesh
        coordinates, and whether this rank holds the first copy. Every rank makes every group, in one order."""
        mesh = self.device_mesh()
        degree = self.pipeline_parallel_degree
        # Global ranks by pipeline rank (rows), one column per coordinate of the other dims.
        ranks_by_stage = mesh.mesh.reshape(degree, -1).tolist()
        pp_rank = mesh["pp"].get_local_rank()
        shared = {}
        for name, holders in sorted(self.pipeline_holders(model).items()):
            if len(holders) < 2:
                continue
            holding = sorted(holders)
            for column in range(len(ranks_by_stage[0])):
                group = dist.new_group([ranks_by_stage[holder][column] for holder in holding])
                if pp_rank in holders and ranks_by_stage[pp_rank][column] == self.env.rank:
                    shared[name] = (group, pp_rank == holding[0])
        return shared

    def _shard(self, root: nn.Module) -> None:
        """``fully_shard`` each of the root's ``blocks`` (a model's list, a stage's dict), then the root (the
        layers outside the blocks); nothing on one rank."""
        if not self.shards:
            return
        _check_gloo_sharding_supported(type(self).__name__, self.env)
        blocks = root.blocks.values() if isinstance(root.blocks, nn.ModuleDict) else root.blocks
        mesh = self._sharding_mesh
        policy = MixedPrecisionPolicy(
            param_dtype=self.compute_dtype, reduce_dtype=DTYPES[self.mixed_precision.reduce_dtype]
        )
        blocks = list(blocks)
        for index, block in enumerate(blocks):
            # The last block's parameters are needed again at once by backward: keep them gathered.
            reshard = self.reshard_after_forward and index < len(blocks) - 1
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)

    def sum_over_stages(self, values: torch.Tensor) -> torch.Tensor:
        if self.pipeline_parallel_degree > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.device_mesh()["pp"].get_group())
        return values

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        if self.shards:
            model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def forward_context(self) -> contextlib.AbstractContextManager:
        # FSDP2's MixedPrecisionPolicy already casts parameters; autocast on top would cast twice.
        return contextlib.nullcontext() if self.shards else super().forward_context()


class HSDPConfig(FSDP2Config):
    replicate_degree: int = Field(-1, ge=-1, description="replica groups; -1 = infer from the world size")
    shard_degree: int = Field(-1, ge=-1, description="ranks sharing one replica; -1 = ranks per node")


class HSDP(FSDP2):
    """Hybrid sharding: parameters sharded within a group of ranks, replicated across groups (2-D mesh)."""

    def __init__(self, config: HSDPConfig, env: DistributedEnvironment):
        super().__init__(config, env)
        model_parallel = self.model_parallel_degree
        described = f"the world size {env.world_size}" + (
            f" ÷ (tp × cp × pp) {model_parallel} = {self.data_parallel_size}" if model_parallel > 1 else ""
        )
        # A node's ranks form TP and CP groups first; the default shard group is what is left of the node.
        self.replicate_degree, self.shard_degree = _mesh_degrees(
            self.data_parallel_size,
            config.replicate_degree,
            config.shard_degree,
            max(1, env.local_world_size // (self.tensor_parallel_degree * self.context_parallel_degree)),
            described,
        )

    def _data_parallel_shape(self) -> dict[str, int]:
        return {"dp_replicate": self.replicate_degree, "dp_shard": self.shard_degree}


def _release_layers_outside(model: nn.Module, stages: Iterable[nn.Module]) -> None:
    """Move every layer of ``model`` that none of this rank's ``stages`` holds to the meta device: its memory
    is freed, while its shapes still count for the model's figures (parameters, FLOPs)."""
    kept = {id(tensor) for stage in stages for tensor in itertools.chain(stage.parameters(), stage.buffers())}
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if own and not any(id(tensor) in kept for tensor in own):
            module.to_empty(device="meta", recurse=False)


def _mesh_degrees(
    data_parallel_size: int, replicate: int, shard: int, local_size: int, described: str
) -> tuple[int, int]:
    """replicate × shard = ``data_parallel_size`` (``described`` in messages); -1 fills in one from the other,
    both -1 shard over ``local_size`` (the data-parallel ranks of one node)."""
    if 0 in (replicate, shard):
        raise UserError("parallelism.config: replicate_degree and shard_degree must be positive or -1")
    if replicate == -1 and shard == -1:
        shard = local_size
    if replicate == -1:
        replicate = data_parallel_size // shard if data_parallel_size % shard == 0 else -1
    elif shard == -1:
        shard = data_parallel_size // replicate if data_parallel_size % replicate == 0 else -1
    if replicate * shard != data_parallel_size or replicate < 1:
        raise UserError(
            f"parallelism.config: replicate_degree × shard_degree must equal {described} "
            f"(got replicate_degree={replicate}, shard_degree={shard})"
        )
    return replicate, shard


PARALLELISM = {
    "FSDP2": (FSDP2, FSDP2Config),
    "HSDP": (HSDP, HSDPConfig),
    "DDP": (DDP, DDPConfig),
    "NoParallelism": (NoParallelism, NoParallelismConfig),
}
