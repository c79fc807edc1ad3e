"""Layouts of an N-D parallel run, by arithmetic alone: the bytes each rank sends per optimizer step, the memory it
needs, and the layouts of a world size ordered by communication (what ``llm_gym validate --suggest_layout`` lists).

A layout is the mesh of ``parallel/strategies.py``, outermost first: ``pp``, ``dp_replicate`` (HSDP),
``dp_shard``, ``cp``, ``tp``. FSDP2 shards parameters over ``dp_shard × cp`` and HSDP replicates them over
``dp_replicate``. Byte counts are what a ring algorithm makes each member of a group of ``n`` send, the convention
NCCL's bus bandwidth is measured in: an all-gather or reduce-scatter of ``S`` bytes (the whole, gathered
tensor) ``(n-1)/n · S``, an all-reduce ``2(n-1)/n · S``, an all-to-all ``(n-1)/n`` of its input, a point-to-point
send its bytes. Figures are per rank, averaged over the ranks (pipeline stages differ).

A collective over a group whose ranks sit on more than one node runs at the pace of its slowest, inter-node, links:
all its bytes count as inter-node. Layouts are ordered by ``intra-node bytes + INTER_NODE_WEIGHT × inter-node
bytes``.
"""

import math
from dataclasses import dataclass, field

INTER_NODE_WEIGHT = 8
"""How much more an inter-node byte costs than one inside a node: an H100's NVLink moves 450 GB/s each way, its
share of the node's InfiniBand 400 Gb/s = 50 GB/s (9×); A100: 300 GB/s against 25 GB/s (12×). 8 errs low."""
ACTIVATION_ELEMENTS_PER_LAYER = 17
"""Per-layer activations kept for backward, in elements per token of the hidden width, for a pre-norm decoder with
fused (flash/SDPA) attention: Korthikanti et al. 2022, the 34·s·b·h bytes at 2 bytes each, without the
attention-score term that fused kernels do not store."""
WEIGHT_AND_GRADIENT_BYTES_PER_PARAMETER = 8
"""fp32 master weights and fp32 gradients, before the optimizer's own state."""
USABLE_DEVICE_FRACTION = 0.9
"""The share of a device's memory a layout may plan to fill: the rest is the CUDA context, the communication
library's buffers and the allocator's fragmentation."""
SUGGESTED_LAYOUTS_SHOWN = 10


@dataclass(frozen=True)
class ModelFigures:
    """The shapes of a decoder that its communication and memory depend on."""

    n_layer: int
    dim: int
    n_head: int
    n_head_kv: int
    vocab_size: int
    parameters: int
    """Every parameter once (tied embeddings once)."""
    block_parameters: int
    """One transformer block's."""
    block_whole_under_tensor_parallel: int
    """Of one block's parameters, those tensor parallelism leaves whole on every rank (norms, row-wise biases)."""
    outer_whole_under_tensor_parallel: int
    """Of the parameters outside the blocks, those it leaves whole (the final norm, learned positions' share)."""
    tied_embeddings: bool
    learned_positions: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def outer_parameters(self) -> int:
        """Outside the blocks: embeddings, the output head (untied), the final norm, learned positions."""
        return self.parameters - self.n_layer * self.block_parameters


@dataclass(frozen=True)
class StepFigures:
    """One optimizer step of one data-parallel rank, and the dtypes it runs in."""

    sequence_length: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    compute_bytes: int
    """Bytes per element of the compute dtype: FSDP2's gathered parameters, activations."""
    reduce_bytes: int
    """Bytes per element of the dtype gradients are reduced in."""
    optimizer_state_tensors: float
    """fp32 state tensors the optimizer keeps per parameter."""
    checkpoint_every: int | None = None
    """Activation checkpointing: every block (1), every k-th (k), none (None)."""
    reshard_after_forward: bool = True

    @property
    def micro_batch_tokens(self) -> int:
        return self.micro_batch_size * self.sequence_length

    @property
    def state_bytes_per_parameter(self) -> float:
        return WEIGHT_AND_GRADIENT_BYTES_PER_PARAMETER + 4 * self.optimizer_state_tensors


@dataclass(frozen=True)
class Layout:
    tensor_parallel: int = 1
    context_parallel: int = 1
    pipeline_parallel: int = 1
    replicate: int = 1
    """dp_replicate: HSDP's replica groups (1 = FSDP2)."""
    shard: int = 1
    """dp_shard: the data-parallel ranks that share one replica's parameters."""
    stages_per_rank: int = 1

    @property
    def data_parallel(self) -> int:
        return self.replicate * self.shard

    @property
    def world_size(self) -> int:
        return self.pipeline_parallel * self.data_parallel * self.context_parallel * self.tensor_parallel

    @property
    def sharding_group(self) -> int:
        """The ranks FSDP2 shards each parameter over: ``dp_shard × cp``."""
        return self.shard * self.context_parallel

    @property
    def strategy(self) -> str:
        return "HSDP" if self.replicate > 1 else "FSDP2"

    def mesh_shape(self) -> dict[str, int]:
        """Dims and degrees, outermost first, the dims of degree 1 left out (``dp_shard`` always named)."""
        dims = {
            "pp": self.pipeline_parallel,
            "dp_replicate": self.replicate,
            "dp_shard": self.shard,
            "cp": self.context_parallel,
            "tp": self.tensor_parallel,
        }
        return {name: degree for name, degree in dims.items() if degree > 1 or name == "dp_shard"}

    def __str__(self) -> str:
        return " × ".join(f"{name} {degree}" for name, degree in self.mesh_shape().items())

    def overrides(self) -> list[str]:
        """The command-line overrides that select this layout (the global batch's accumulation aside)."""
        keys = {
            "parallelism.type_hint": self.strategy,
            "parallelism.config.tensor_parallel_degree": self.tensor_parallel,
            "parallelism.config.context_parallel_degree": self.context_parallel,
            "parallelism.config.pipeline_parallel_degree": self.pipeline_parallel,
        }
        if self.replicate > 1:
            keys["parallelism.config.replicate_degree"] = self.replicate
            keys["parallelism.config.shard_degree"] = self.shard
        return [f"{key}={value}" for key, value in keys.items()]

    def spans_nodes(self, dim: str, ranks_per_node: int) -> bool:
        """Whether a group of mesh dim ``dim`` (or ``fsdp``: ``dp_shard × cp`` flattened) holds ranks of several
        nodes: its stride (the product of the inner degrees) times its degree exceeds a node."""
        inner = {
            "tp": (1, self.tensor_parallel),
            "cp": (self.tensor_parallel, self.context_parallel),
            "fsdp": (self.tensor_parallel, self.sharding_group),
            "dp_replicate": (self.tensor_parallel * self.sharding_group, self.replicate),
            "pp": (self.world_size // self.pipeline_parallel, self.pipeline_parallel),
        }
        stride, degree = inner[dim]
        return degree > 1 and stride * degree > ranks_per_node


@dataclass(frozen=True)
class Traffic:
    """Bytes one rank sends per optimizer step (averaged over the ranks), by kind, and the kinds' mesh dims."""

    bytes_by_kind: dict[str, float]
    dim_of_kind: dict[str, str]

    @property
    def total(self) -> float:
        return sum(self.bytes_by_kind.values())

    def inter_node(self, layout: Layout, ranks_per_node: int) -> float:
        return sum(
            sent
            for kind, sent in self.bytes_by_kind.items()
            if layout.spans_nodes(self.dim_of_kind[kind], ranks_per_node)
        )

    def weighted_by_kind(self, layout: Layout, ranks_per_node: int) -> dict[str, float]:
        """Each kind's bytes, those between nodes counted ``INTER_NODE_WEIGHT`` times."""
        return {
            kind: sent * (INTER_NODE_WEIGHT if layout.spans_nodes(self.dim_of_kind[kind], ranks_per_node) else 1)
            for kind, sent in self.bytes_by_kind.items()
        }

    def weighted(self, layout: Layout, ranks_per_node: int) -> float:
        return sum(self.weighted_by_kind(layout, ranks_per_node).values())


def _ring(group: int) -> float:
    """The share of a gathered (or reduced-scattered) tensor each member of a ring of ``group`` sends."""
    return (group - 1) / group


def stage_blocks(n_layer: int, layout: Layout) -> float:
    """Blocks one rank holds, on average: its ``stages_per_rank`` stages' share of ``n_layer``."""
    return n_layer / layout.pipeline_parallel


def parameters_per_tensor_parallel_rank(model: ModelFigures, tensor_parallel: int) -> tuple[float, float]:
    """Elements of one block, and of the parts outside the blocks, on one rank of a tensor-parallel group."""
    block = (model.block_parameters - model.block_whole_under_tensor_parallel) / tensor_parallel
    outer = (model.outer_parameters - model.outer_whole_under_tensor_parallel) / tensor_parallel
    return block + model.block_whole_under_tensor_parallel, outer + model.outer_whole_under_tensor_parallel


def traffic(model: ModelFigures, step: StepFigures, layout: Layout) -> Traffic:
    """The bytes one rank sends in one optimizer step, by kind (module docstring: the convention)."""
    tp, cp, pp, n = layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel, layout.sharding_group
    micro_batches = step.gradient_accumulation_steps
    block, outer = parameters_per_tensor_parallel_rank(model, tp)
    blocks = stage_blocks(model.n_layer, layout)
    # A tied embedding under pipeline parallelism lives on the first and the last stage; averaged over the stages.
    outer_on_rank = (outer + (model.vocab_size * model.dim / tp if model.tied_embeddings and pp > 1 else 0)) / pp
    stage_parameters = blocks * block + outer_on_rank
    sent: dict[str, float] = {}
    if n > 1:
        # Forward gathers every FSDP unit for each micro batch; backward gathers them again when they were resharded,
        # the root (embeddings, head) too, all but each stage's last block, which stays gathered
        # (strategies.FSDP2.parallelize).
        regathered = stage_parameters - layout.stages_per_rank * block if step.reshard_after_forward else 0
        gathered = (stage_parameters + regathered) * micro_batches
        sent["FSDP all-gather"] = _ring(n) * gathered * step.compute_bytes
        sent["FSDP reduce-scatter"] = _ring(n) * stage_parameters * step.reduce_bytes
    if layout.replicate > 1:
        sent["HSDP all-reduce"] = 2 * _ring(layout.replicate) * stage_parameters / n * step.reduce_bytes
    tokens = step.micro_batch_tokens / cp  # one rank's share of a micro batch's sequence
    recomputed = 0 if step.checkpoint_every is None else len(range(0, model.n_layer, step.checkpoint_every))
    if tp > 1:
        # In units of one ring pass over a micro batch's [B, T, D]. Per block: the attention's and the MLP's input
        # gathered over the sequence and their outputs reduce-scattered forward (4; again for a recomputed block),
        # the reduce-scatters' conjugate all-gathers backward (2), and the gathers' conjugate reduce-scatters of the
        # two inputs' gradients backward (2, summed over the column-wise projections first): Megatron's minimum.
        per_pass = _ring(tp) * tokens * model.dim * step.compute_bytes
        block_passes = (4 + 2 + 2) * model.n_layer + 4 * recomputed
        # The vocabulary-parallel embedding's output reduce-scattered (learned positions: all-reduced, 2) forward
        # and gathered backward; the head's input gathered forward and reduce-scattered backward.
        outer_passes = (3 if model.learned_positions else 2) + 2
        sent["TP activations"] = per_pass * (block_passes + outer_passes) / pp * micro_batches
        if model.learned_positions:
            # The column-split position table's output gathered: [T, D], for the whole batch.
            positions = _ring(tp) * step.sequence_length * model.dim * step.compute_bytes
            sent["TP activations"] += positions / pp * micro_batches
        # loss_parallel: the max, the sum of exponentials and the target's logit all-reduced over the vocabulary.
        sent["TP loss"] = 3 * 2 * _ring(tp) * tokens * 4 * micro_batches / pp
    if cp > 1:
        # Per layer: query, key, value to head-sharded and the output back, forward and backward (and forward again
        # when recomputed); each rank keeps 1/cp of what it holds.
        heads = (2 * model.n_head + 2 * model.n_head_kv) / tp
        per_layer = _ring(cp) * tokens * heads * model.head_dim * step.compute_bytes
        sent["CP all-to-all"] = per_layer * (2 * model.n_layer + recomputed) / pp * micro_batches
    if pp > 1:
        # Each stage boundary: the activations forward, their gradient backward, each rank its tp and cp slice.
        boundaries = pp * layout.stages_per_rank - 1
        activation = tokens * model.dim / tp * step.compute_bytes
        sent["PP activations"] = 2 * boundaries / pp * activation * micro_batches
        if model.tied_embeddings:
            # The first and last stage sum the tied embedding's gradient (their shards): 2 of the pp ranks.
            shard = model.vocab_size * model.dim / tp / n
            sent["PP tied-embedding sum"] = 2 / pp * 2 * _ring(2) * shard * step.reduce_bytes
    dims = {
        "FSDP all-gather": "fsdp",
        "FSDP reduce-scatter": "fsdp",
        "HSDP all-reduce": "dp_replicate",
        "TP activations": "tp",
        "TP loss": "tp",
        "CP all-to-all": "cp",
        "PP activations": "pp",
        "PP tied-embedding sum": "pp",
    }
    return Traffic(sent, {kind: dims[kind] for kind in sent})


@dataclass(frozen=True)
class Memory:
    """Bytes one rank holds at its peak, by part, for the rank that needs the most."""

    state: float
    """Its shard of fp32 weights, gradients and optimizer state."""
    unsharded: float
    """Parameters FSDP2 has gathered, and gradients accumulated whole between micro batches."""
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.state + self.unsharded + self.activations + self.logits


def stored_layers(layers: float, checkpoint_every: int | None) -> float:
    """Layers' worth of activations kept for backward: checkpointed blocks keep their input only, and one block at a
    time is recomputed in full."""
    if checkpoint_every is None:
        return layers
    checkpointed = len(range(0, math.ceil(layers), checkpoint_every))
    return layers - checkpointed + checkpointed / ACTIVATION_ELEMENTS_PER_LAYER + 1


def micro_batches_in_flight(step: StepFigures, layout: Layout, schedule_fills_first: bool) -> int:
    """Micro batches whose activations the first stage keeps at once: all of them under a schedule that runs every
    forward first (GPipe, LoopedBFS), else (1F1B and the interleaved schedules) up to one per stage."""
    if layout.pipeline_parallel == 1:
        return 1
    if schedule_fills_first:
        return step.gradient_accumulation_steps
    return min(step.gradient_accumulation_steps, layout.pipeline_parallel * layout.stages_per_rank)


def memory(
    model: ModelFigures,
    step: StepFigures,
    layout: Layout,
    state_parameters: float | None = None,
    *,
    schedule_fills_first: bool = False,
) -> Memory:
    """A planning figure for the rank that needs the most (``state_parameters``: the elements of its parameter shard,
    where the caller counted them exactly; by default from the figures, the first stage with its embedding)."""
    tp, cp, pp, n = layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel, layout.sharding_group
    block, outer = parameters_per_tensor_parallel_rank(model, tp)
    blocks = math.ceil(stage_blocks(model.n_layer, layout))
    embedding = model.vocab_size * model.dim / tp
    # Under pipeline parallelism the embedding stays on the first stage, the head (or the tied copy) on the last.
    stage_outer = outer if pp == 1 else max(embedding, outer - embedding + (embedding if model.tied_embeddings else 0))
    stage_parameters = blocks * block + stage_outer
    if state_parameters is None:
        state_parameters = stage_parameters / n
    state = state_parameters * step.state_bytes_per_parameter
    unsharded = 0.0
    if n > 1:
        # FSDP2 keeps a block gathered while it prefetches the next (all of them without resharding), and the root.
        gathered = stage_parameters if not step.reshard_after_forward else 2 * block + stage_outer
        accumulated = stage_parameters * step.reduce_bytes if step.gradient_accumulation_steps > 1 else 0
        unsharded = gathered * step.compute_bytes + accumulated
    tokens = step.micro_batch_tokens / cp
    # Sequence parallelism splits what a block keeps between the TP ranks (Korthikanti et al., 34·s·b·h / t).
    per_layer = ACTIVATION_ELEMENTS_PER_LAYER * tokens * model.dim * step.compute_bytes / tp
    in_flight = micro_batches_in_flight(step, layout, schedule_fills_first)
    activations = per_layer * stored_layers(blocks, step.checkpoint_every) * in_flight
    # Logits in the compute dtype, their fp32 copy for the loss, and its gradient; split by vocabulary under TP.
    logits = tokens * model.vocab_size * (step.compute_bytes + 8) / tp
    if pp > 1 and schedule_fills_first:
        logits *= step.gradient_accumulation_steps
    return Memory(state, unsharded, activations, logits)


@dataclass(frozen=True)
class Plan:
    """A layout that keeps the global batch, with what it sends and needs."""

    layout: Layout
    gradient_accumulation_steps: int
    traffic: Traffic
    memory: Memory
    weighted_bytes: float
    inter_node_bytes: float
    problems: list[str] = field(default_factory=list)
    """Why it cannot run (empty: it can)."""


def divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def layout_problems(model: ModelFigures, sequence_length: int, layout: Layout, ranks_per_node: int) -> list[str]:
    """What keeps ``layout`` from splitting this model, in the words of the keys to change."""
    tp, cp, pp = layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel
    heads = {"n_head": model.n_head, "n_head_kv": model.n_head_kv}
    problems = [
        f"model.config.{name} ({count}) is not divisible by tensor_parallel_degree {tp}"
        for name, count in {**heads, "vocab_size": model.vocab_size}.items()
        if count % tp
    ]
    if cp > 1:
        problems += [
            f"model.config.{name} ÷ tensor_parallel_degree ({count // tp}) is not divisible by context_parallel_degree "
            f"{cp}"
            for name, count in heads.items()
            if count % tp == 0 and (count // tp) % cp
        ]
        if sequence_length % cp:
            problems.append(
                f"training.sequence_length ({sequence_length}) is not divisible by context_parallel_degree {cp}"
            )
    if pp * layout.stages_per_rank > model.n_layer:
        problems.append(
            f"pipeline_parallel_degree {pp} × {layout.stages_per_rank} stages per rank is more stages than the "
            f"{model.n_layer} blocks"
        )
    if tp * cp > ranks_per_node or ranks_per_node % (tp * cp):
        problems.append(f"tp × cp ({tp * cp}) must divide the {ranks_per_node} ranks of a node, to stay inside it")
    return problems


def candidate_layouts(world_size: int, ranks_per_node: int, stages_per_rank: int) -> list[Layout]:
    """Every layout of ``world_size`` ranks with tp × cp inside a node, each data-parallel degree split every way into
    replicate × shard."""
    node = min(ranks_per_node, world_size)
    layouts = []
    for tp in divisors(node):
        for cp in divisors(node // tp):
            for pp in divisors(world_size // (tp * cp)):
                data_parallel = world_size // (tp * cp * pp)
                for replicate in divisors(data_parallel):
                    layouts.append(
                        Layout(tp, cp, pp, replicate, data_parallel // replicate, stages_per_rank if pp > 1 else 1)
                    )
    return layouts


def accumulation_for(global_samples: int, micro_batch_size: int, data_parallel: int) -> int | None:
    """The gradient accumulation that keeps ``global_samples`` per step at this data-parallel degree, or None."""
    per_pass = micro_batch_size * data_parallel
    return global_samples // per_pass if global_samples % per_pass == 0 else None


def plan_layout(
    model: ModelFigures, step: StepFigures, layout: Layout, ranks_per_node: int, *, schedule_fills_first: bool = False
) -> Plan:
    sent = traffic(model, step, layout)
    return Plan(
        layout,
        step.gradient_accumulation_steps,
        sent,
        memory(model, step, layout, schedule_fills_first=schedule_fills_first),
        sent.weighted(layout, ranks_per_node),
        sent.inter_node(layout, ranks_per_node),
        layout_problems(model, step.sequence_length, layout, ranks_per_node),
    )


def by_communication(plans: list[Plan]) -> list[Plan]:
    """Fewest weighted bytes first; then the least memory; then the fewest mesh dims (the simpler run)."""
    return sorted(plans, key=lambda plan: (plan.weighted_bytes, plan.memory.total, len(plan.layout.mesh_shape())))


def fits(plan: Plan, device_bytes: float) -> bool:
    return plan.memory.total <= USABLE_DEVICE_FRACTION * device_bytes
