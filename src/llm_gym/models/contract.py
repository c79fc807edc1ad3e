"""The model contract: what llm_gym needs of any model it trains, shards, checkpoints, samples and exports.

``LanguageModel`` states it. ``as_language_model`` checks a model once, when it is built (for a run, for
``llm_gym validate``, when a checkpoint is loaded for sampling or export), and names what is missing;
from then on llm_gym relies on the contract and probes nothing.

Parallelism hooks belong here too. When a strategy needs more of a model, such as a tensor-parallel plan
(which layers of a block are split across ranks, and how) or pipeline stage cuts (where the blocks may be
divided into stages), that member is added to ``LanguageModel`` with its docstring, ``as_language_model``
checks it like the others (it reads the protocol's own annotations and methods), ``DecoderLM`` provides it,
and the strategy reads it from the contract.
"""

import inspect
from typing import Protocol, get_type_hints

import torch
from torch import nn

from llm_gym.errors import ConfigError
from llm_gym.models.kv_cache import KVCache

CONTRACT_DOCS = "docs/configuration.md, The model contract"


class LanguageModel(Protocol):
    """A causal language model, also a ``torch.nn.Module``: ``DecoderLM``, or a model of your own.

    Optional, and checked only where ``parallelism.config.tensor_parallel_degree`` is above 1:
    ``tensor_parallel_plan(degree: int) -> dict[str, ParallelStyle]``, the plan ``parallelize_module`` applies
    to the model on the mesh's ``tp`` dim, keyed by the model's own module names (``*`` for any one name,
    e.g. ``blocks.*.attention.query``), before its blocks are wrapped. It raises ``ConfigError`` where the model
    cannot be split ``degree`` ways. Every parameter must be placed by it (sharded or replicated), since all
    of them then live on one mesh; ``forward`` returns the logits as a ``DTensor`` split over the vocabulary
    (``Shard(-1)``), and the loss is computed on them under ``loss_parallel``. Sequence-sharded activations
    and the inputs of any other model are the plan's own business (docs/parallelism.md).

    Optional, and checked only where ``parallelism.config.pipeline_parallel_degree`` is above 1:
    ``pipeline_stage(first_block: int, end_block: int) -> nn.Module``, the blocks ``first_block .. end_block - 1``
    as one pipeline stage: a module holding the model's own layers under the model's own names (``blocks`` an
    ``nn.ModuleDict`` keyed by each block's index in ``blocks``; the embeddings when ``first_block`` is 0, the
    final layers when ``end_block`` is ``n_layer``), whose ``forward`` takes the token ids ``[B, T]`` (first stage)
    or the previous stage's output and returns one tensor: the next stage's input, or the logits (last stage). A
    layer two stages use (a tied embedding) is held by both under the same name; the pipeline sums its gradient
    over them. It raises ``ConfigError`` where the model cannot be cut so.

    Optional, and checked only where ``parallelism.config.context_parallel_degree`` is above 1:
    ``apply_context_parallel(exchange: SequenceExchange) -> None``, called once before the blocks are wrapped
    (and by ``llm_gym validate`` on the meta device). From then on ``forward`` takes this rank's chunk of each
    sequence, ``input_ids [B, T / exchange.degree]`` (positions from ``exchange.rank × T / degree``), and returns
    that chunk's logits; the model's attention trades the chunk for a share of the heads over the whole sequence
    with ``exchange.to_heads`` and back with ``exchange.to_sequence``, and position embeddings count from the
    chunk's first position. ``document_ids`` stay those of the whole sample, ``[B, T]``, since attention sees the
    whole sequence. It raises ``ConfigError`` where the model cannot be split ``exchange.degree`` ways (its
    query or key/value heads, under tensor parallelism each rank's share of them).

    Optional, and checked only where ``training.loss_chunk_tokens`` is set: ``forward`` also takes the keyword
    ``output_loss``, a callable ``(hidden [B, T, D], weight [V, D]) -> tensors``. Given it, ``forward`` returns
    ``output_loss(hidden, weight)`` in place of the logits, where the logits would be ``hidden @ weightᵀ`` (the
    output projection's input and weight): the chunked loss then never holds the whole logits. It is called
    inside ``forward``, where FSDP2 has gathered the weight.
    """

    vocab_size: int
    """Token ids are ``0 .. vocab_size - 1``; the logits have as many columns. Batches and tokenizers are
    checked against it."""
    sequence_length: int
    """The longest input in tokens: the longest training sequence, and the context of sampling."""
    blocks: nn.ModuleList
    """The repeated blocks, in order: what FSDP2 shards one by one, activation checkpointing recomputes and
    ``torch.compile`` compiles. Those wrap blocks in place, so a block is reached through this list."""
    n_layer: int
    n_head: int
    head_dim: int
    dim: int
    """Layers, query heads, head dimension and width of the residual stream: with the parameter count, what
    the FLOPs per token (MFU) and the memory estimate of ``llm_gym validate`` are computed from."""

    def forward(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for ``input_ids [B, T]``; with a cache, the positions after those it
        holds, which it then holds too.

        A model with ``uses_document_ids`` (see ``reads_document_ids``) also takes ``document_ids [B, T]``, a
        keyword argument, in training and evaluation: which document of the packed sample each input token
        belongs to (0, 1, ... along a row). Sampling never passes it: a prompt is one document."""
        ...

    def init_weights(self) -> None:
        """Fill every parameter and buffer in place from the global RNG. llm_gym builds the model on the meta
        device, allocates it with ``to_empty`` and calls this under ``torch.no_grad()`` after seeding (with
        ``training.meta_device_init``, on each rank's shard after sharding)."""
        ...

    def new_kv_cache(self) -> KVCache:
        """An empty cache with room for ``sequence_length`` positions, for sampling one token at a time."""
        ...


class SequenceExchange(Protocol):
    """What context parallelism hands a model (``apply_context_parallel``): the all-to-alls around attention over
    the ``degree`` ranks that hold the chunks of one sequence, of which this rank holds chunk ``rank``."""

    degree: int
    rank: int
    tensor_parallel_degree: int
    """The ranks tensor parallelism already splits each layer's heads over (1 without it): ``to_heads`` is given
    this rank's ``H / tensor_parallel_degree`` of them."""

    def to_heads(self, chunk: torch.Tensor) -> torch.Tensor:
        """``[B, T / degree, H, D]`` (this rank's positions, every head) to ``[B, T, H / degree, D]`` (the whole
        sequence, this rank's share of the heads, ``rank × H / degree`` onwards); differentiable."""
        ...

    def to_sequence(self, heads: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_heads``: ``[B, T, H / degree, D]`` to ``[B, T / degree, H, D]``; differentiable."""
        ...


DOCUMENT_IDS = "document_ids"
"""The keyword argument of ``forward`` that carries the documents of a packed sample."""
OUTPUT_LOSS = "output_loss"
"""The keyword argument of ``forward`` that computes the loss from the output projection's input and weight."""


def reads_document_ids(model: LanguageModel) -> bool:
    """Whether batches for ``model`` carry ``document_ids`` (an optional member of the contract,
    ``uses_document_ids: bool``, False when absent, so models that know nothing of documents need no change)."""
    return getattr(model, "uses_document_ids", False) is True


_ATTRIBUTES = get_type_hints(LanguageModel)
_METHODS = tuple(name for name, member in vars(LanguageModel).items() if callable(member) and name[0] != "_")


def _provides(value: object, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


TENSOR_PARALLEL_PLAN = "tensor_parallel_plan"
"""The optional member of the contract that tensor parallelism reads (see ``LanguageModel``)."""
PIPELINE_STAGE = "pipeline_stage"
"""The optional member of the contract that pipeline parallelism reads (see ``LanguageModel``)."""
APPLY_CONTEXT_PARALLEL = "apply_context_parallel"
"""The optional member of the contract that context parallelism calls (see ``LanguageModel``)."""


def as_language_model(
    model: object,
    tensor_parallel: bool = False,
    context_parallel: bool = False,
    pipeline: bool = False,
    chunked_loss: bool = False,
) -> LanguageModel:
    """``model`` itself, once it provides the whole contract (with ``tensor_parallel``, its plan too; with
    ``context_parallel``, its ``apply_context_parallel``; with ``pipeline``, its stages; with ``chunked_loss``, a
    ``forward`` taking ``output_loss``); else a ``ConfigError`` naming what it lacks."""
    lacking = [] if isinstance(model, nn.Module) else ["to be a torch.nn.Module"]
    lacking += [
        f"{name} ({kind.__name__})"
        for name, kind in _ATTRIBUTES.items()
        if not _provides(getattr(model, name, None), kind)
    ]
    lacking += [f"{name}()" for name in _METHODS if not callable(getattr(model, name, None))]
    forward = getattr(model, "forward", None)
    if reads_document_ids(model) and not (callable(forward) and DOCUMENT_IDS in inspect.signature(forward).parameters):
        lacking.append(f"a forward() taking {DOCUMENT_IDS} (it has uses_document_ids = True)")
    if tensor_parallel and not callable(getattr(model, TENSOR_PARALLEL_PLAN, None)):
        lacking.append(
            f"{TENSOR_PARALLEL_PLAN}(degree), which parallelism.config.tensor_parallel_degree > 1 needs; give the "
            "model one, or set tensor_parallel_degree: 1"
        )
    if pipeline and not callable(getattr(model, PIPELINE_STAGE, None)):
        lacking.append(
            f"{PIPELINE_STAGE}(first_block, end_block), which parallelism.config.pipeline_parallel_degree > 1 needs; "
            "give the model one, or set pipeline_parallel_degree: 1"
        )
    if context_parallel and not callable(getattr(model, APPLY_CONTEXT_PARALLEL, None)):
        lacking.append(
            f"{APPLY_CONTEXT_PARALLEL}(exchange), which parallelism.config.context_parallel_degree > 1 needs; give "
            "the model one, or set context_parallel_degree: 1"
        )
    if chunked_loss and not (callable(forward) and OUTPUT_LOSS in inspect.signature(forward).parameters):
        lacking.append(
            f"a forward() taking {OUTPUT_LOSS}, which training.loss_chunk_tokens needs; give the model one, or set "
            "loss_chunk_tokens: 0"
        )
    if lacking:
        raise ConfigError(
            f"model: {type(model).__name__} does not provide what llm_gym needs of a model; it lacks "
            f"{', '.join(lacking)} ({CONTRACT_DOCS})"
        )
    return model
