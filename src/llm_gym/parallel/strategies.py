"""Data-parallel strategies as registry components: FSDP2, HSDP, DDP, or none.

Each strategy wraps a model for its mesh and answers the questions the training step asks: how many
data-parallel ranks there are, how to skip gradient sync between micro batches, how to clip by the global
gradient norm, and under which autocast the forward runs.
"""

import contextlib
import functools
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
from llm_gym.models.contract import TENSOR_PARALLEL_PLAN, LanguageModel
from llm_gym.parallel.distributed import DistributedEnvironment, torch_release

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

    def __init__(self, config: "_StrategyConfig", env: DistributedEnvironment):
        self.env = env
        self.mixed_precision = config.mixed_precision
        self.compute_dtype = _compute_dtype(self.mixed_precision, env.device)

    @property
    def data_parallel_size(self) -> int:
        return self.env.world_size // self.tensor_parallel_degree

    @property
    def data_parallel_rank(self) -> int:
        # tp is the innermost mesh dim: ranks r·tp .. r·tp + tp - 1 form one TP group, which reads one
        # data-parallel rank's samples.
        return self.env.rank // self.tensor_parallel_degree

    @property
    def data_parallel_group(self) -> dist.ProcessGroup | None:
        """The ranks that hold different samples, for summing losses and token counts; None = all ranks."""
        return None

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
        total_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], norm_type=2.0)
        if isinstance(total_norm, DTensor):
            total_norm = total_norm.full_tensor()
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


def _check_gloo_sharding_supported(strategy: str, env: DistributedEnvironment) -> None:
    if env.world_size > 1 and env.device.type == "cpu" and torch_release() < GLOO_SHARDING_MIN_TORCH:
        minimum = ".".join(map(str, GLOO_SHARDING_MIN_TORCH))
        raise UserError(
            f"parallelism {strategy} on CPU (gloo) needs torch >= {minimum}, this is torch {torch.__version__}; "
            "upgrade torch, or use parallelism DDP on CPU"
        )


class FSDP2Config(_StrategyConfig):
    reshard_after_forward: bool = Field(
        True, description="free gathered parameters after forward (less memory, one more all-gather in backward)"
    )
    tensor_parallel_degree: int = Field(
        1,
        ge=1,
        description="ranks each layer is split over (tensor parallel, sequence parallel between blocks): the "
        "innermost mesh dim; the data-parallel degree is the world size ÷ this",
    )


class FSDP2(ParallelismStrategy):
    """Fully sharded data parallel (``fully_shard``) per transformer block and at the root.

    On one rank there is nothing to shard, and FSDP2's gather/scatter copies would only cost time
    (about 3% of a CPU step, benchmarks/training_overhead.py), so the model runs unwrapped.
    """

    def __init__(self, config: FSDP2Config, env: DistributedEnvironment):
        tensor_parallel_degree = config.tensor_parallel_degree
        if env.world_size % tensor_parallel_degree:
            raise UserError(
                f"parallelism.config.tensor_parallel_degree ({tensor_parallel_degree}) must divide the world size "
                f"{env.world_size}; launch a multiple of {tensor_parallel_degree} ranks, or choose a degree that "
                f"divides {env.world_size}"
            )
        self.tensor_parallel_degree = tensor_parallel_degree
        super().__init__(config, env)
        self.reshard_after_forward = config.reshard_after_forward
        self.shard_degree = self.data_parallel_size
        self._mesh: DeviceMesh | None = None

    def mesh_shape(self) -> dict[str, int]:
        """The mesh's dims and their degrees, outermost first: the data-parallel dims, then ``tp`` if any."""
        tensor_parallel = {"tp": self.tensor_parallel_degree} if self.tensor_parallel_degree > 1 else {}
        return {**self._data_parallel_shape(), **tensor_parallel}

    def _data_parallel_shape(self) -> dict[str, int]:
        return {"dp_shard": self.shard_degree}

    def device_mesh(self) -> DeviceMesh:
        """The run's one mesh, made on first use (it creates process groups, on every rank alike)."""
        if self._mesh is None:
            shape = self.mesh_shape()
            self._mesh = init_device_mesh(self.env.device.type, tuple(shape.values()), mesh_dim_names=tuple(shape))
        return self._mesh

    def _data_parallel_mesh(self) -> DeviceMesh:
        """The dims FSDP2 shards (HSDP: replicates and shards) over."""
        mesh = self.device_mesh()
        return mesh if self.tensor_parallel_degree == 1 else mesh[tuple(self._data_parallel_shape())]

    @functools.cached_property
    def data_parallel_group(self) -> dist.ProcessGroup | None:
        # Made once: the train step sums over it twice a step, and flattening the HSDP dims makes a group.
        if self.tensor_parallel_degree == 1:
            return None
        mesh = self._data_parallel_mesh()
        return (mesh if mesh.ndim == 1 else mesh._flatten()).get_group()

    @property
    def shards(self) -> bool:
        return self.data_parallel_size > 1

    def apply_tensor_parallel(self, model: LanguageModel) -> None:
        if self.tensor_parallel_degree == 1:
            return
        parallelize_module(model, self.device_mesh()["tp"], self.tensor_parallel_plan(model))

    def loss_context(self) -> contextlib.AbstractContextManager:
        return loss_parallel() if self.tensor_parallel_degree > 1 else contextlib.nullcontext()

    def parallelize(self, model: LanguageModel) -> nn.Module:
        if not self.shards:
            return model
        _check_gloo_sharding_supported(type(self).__name__, self.env)
        mesh = self._data_parallel_mesh()
        policy = MixedPrecisionPolicy(
            param_dtype=self.compute_dtype, reduce_dtype=DTYPES[self.mixed_precision.reduce_dtype]
        )
        blocks = list(model.blocks)
        for index, block in enumerate(blocks):
            # The last block's parameters are needed again at once by backward: keep them gathered.
            reshard = self.reshard_after_forward and index < len(blocks) - 1
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        return model

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
        tensor_parallel = self.tensor_parallel_degree
        described = f"the world size {env.world_size}" + (
            f" ÷ tensor_parallel_degree {tensor_parallel} = {self.data_parallel_size}" if tensor_parallel > 1 else ""
        )
        # A node's ranks form TP groups first; the default shard group is what is left of the node.
        self.replicate_degree, self.shard_degree = _mesh_degrees(
            self.data_parallel_size,
            config.replicate_degree,
            config.shard_degree,
            max(1, env.local_world_size // tensor_parallel),
            described,
        )

    def _data_parallel_shape(self) -> dict[str, int]:
        return {"dp_replicate": self.replicate_degree, "dp_shard": self.shard_degree}


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
