"""The decoder-only language model: one implementation, GPT-2 or Llama by configuration.

Pre-norm blocks ``x + attention(norm(x))``, ``x + mlp(norm(x))``, a final norm and an output projection that
is the token embedding itself when embeddings are tied (one parameter, so nothing can untie it: not
``to_empty``, not sharding, not a checkpoint).
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
)

from llm_gym.errors import ConfigError
from llm_gym.models.attention import CausalSelfAttention
from llm_gym.models.contract import SequenceExchange
from llm_gym.models.initialization import WeightInit
from llm_gym.models.kv_cache import KVCache, LayerKVCache
from llm_gym.models.positional import (
    DocumentPositions,
    LearnedPositionEmbedding,
    Llama3RopeScaling,
    PositionalEncoding,
    RotaryEmbedding,
    positions_within_documents,
)
from llm_gym.registry import Component, ComponentFactory


class DecoderLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: PositiveInt
    sequence_length: PositiveInt = Field(description="the longest input; learned position embeddings are this many")
    n_layer: PositiveInt
    dim: PositiveInt
    n_head: PositiveInt
    n_head_kv: PositiveInt | None = Field(None, description="key/value heads (grouped-query attention); null = n_head")
    positional: PositionalEncoding = Field(description="learned (GPT-2) or rope (Llama)")
    rope_theta: PositiveFloat = Field(10_000.0, description="RoPE base; used with positional: rope")
    rope_scaling: Llama3RopeScaling | None = Field(None, description="Llama 3.1 frequency scaling; with rope")
    bias: bool = Field(False, description="biases in every linear layer of attention and MLP")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on embeddings, attention weights and residual branches")
    tie_embeddings: bool = Field(True, description="the output projection is the token embedding matrix")
    qk_norm: bool = Field(
        False, description="normalise each query and key head (the model's norm over head_dim) before rotary"
    )
    document_masking: bool = Field(
        False, description="in a packed sample, a token attends only to earlier tokens of its own document"
    )
    document_positions: DocumentPositions = Field(
        DocumentPositions.CONTINUE,
        description="positions in a packed sample: continue across documents, or restart at 0 at each document",
    )
    norm: Component("norm")
    attention: Component("attention")
    mlp: Component("mlp")
    init: Component("init")

    @model_validator(mode="after")
    def _heads_fit(self) -> "DecoderLMConfig":
        if self.dim % self.n_head:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_head ({self.n_head})")
        n_head_kv = self.n_head_kv or self.n_head
        if self.n_head % n_head_kv:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_head_kv ({n_head_kv})")
        if self.positional == PositionalEncoding.ROPE and (self.dim // self.n_head) % 2:
            raise ValueError(f"rope needs an even head dimension; dim / n_head = {self.dim // self.n_head}")
        # A theta set for learned positions would be ignored: most likely the config meant positional: rope.
        default_theta = type(self).model_fields["rope_theta"].default
        if (
            self.positional == PositionalEncoding.LEARNED
            and "rope_theta" in self.model_fields_set
            and self.rope_theta != default_theta
        ):
            raise ValueError(
                f"rope_theta ({self.rope_theta}) is only used with positional: rope, but positional is learned; "
                "remove rope_theta or set positional: rope"
            )
        if self.positional == PositionalEncoding.LEARNED and self.rope_scaling is not None:
            raise ValueError("rope_scaling is only used with positional: rope, but positional is learned")
        return self


class DecoderBlock(nn.Module):
    def __init__(
        self,
        layer_index: int,
        dim: int,
        n_head: int,
        n_head_kv: int,
        bias: bool,
        dropout: float,
        norm: ComponentFactory,
        attention: ComponentFactory,
        mlp: ComponentFactory,
        rotary: RotaryEmbedding | None,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.layer_index = layer_index
        self.attention_norm = norm(dim=dim)
        head_norms = (norm(dim=dim // n_head), norm(dim=dim // n_head)) if qk_norm else (None, None)
        self.attention = CausalSelfAttention(
            dim, n_head, n_head_kv, bias, attention(dropout=dropout), rotary, *head_norms
        )
        self.mlp_norm = norm(dim=dim)
        self.mlp = mlp(dim=dim, bias=bias)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        start: int = 0,
        kv_cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
        document_mask: object | None = None,
    ) -> torch.Tensor:
        attended = self.attention(self.attention_norm(hidden), start, kv_cache, positions, document_mask)
        hidden = hidden + self.residual_dropout(attended)
        return hidden + self.residual_dropout(self.mlp(self.mlp_norm(hidden)))

    def init_weights(self, weight_init: WeightInit) -> None:
        residual_projections = (self.attention.output, getattr(self.mlp, "output", None))
        _init_modules(self, weight_init, residual_projections, self.layer_index)


def _init_modules(
    root: nn.Module, weight_init: WeightInit, residual_projections: tuple = (), layer_index: int = 0
) -> None:
    """Initialise every module under ``root``, itself included, in place, in module order.

    Each ``nn.Linear`` is drawn by the scheme (a residual projection with the residual std) with its bias at
    zero; any other module holding parameters or buffers of its own fills them with its ``reset_parameters()``.
    """
    for module in root.modules():
        if isinstance(module, nn.Linear):
            if any(module is projection for projection in residual_projections):
                weight_init.residual_projection_(module.weight, layer_index)
            else:
                weight_init.linear_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters") and _holds_state(module):
            module.reset_parameters()


def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


class DecoderLM(nn.Module):
    """``forward(input_ids [B, T]) -> logits [B, T, vocab_size]``; ``blocks`` may be wrapped one by one.

    With ``document_masking`` or ``document_positions: restart`` it reads the documents of a packed sample,
    ``forward(input_ids, document_ids=...)`` (``uses_document_ids`` in the model contract).
    """

    def __init__(
        self,
        config: DecoderLMConfig,
        norm: ComponentFactory,
        attention: ComponentFactory,
        mlp: ComponentFactory,
        init: ComponentFactory,
    ):
        """``norm``, ``attention``, ``mlp`` and ``init`` are ``config``'s nested components, as factories."""
        super().__init__()
        vocab_size, sequence_length, n_layer, dim = (
            config.vocab_size,
            config.sequence_length,
            config.n_layer,
            config.dim,
        )
        self.vocab_size, self.sequence_length, self.n_layer, self.dim = vocab_size, sequence_length, n_layer, dim
        self.n_head, self.n_head_kv, self.head_dim = (
            config.n_head,
            config.n_head_kv or config.n_head,
            dim // config.n_head,
        )
        self.weight_init: WeightInit = init(n_layer=n_layer)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        positional = config.positional
        self.position_embedding = (
            LearnedPositionEmbedding(sequence_length, dim) if positional == PositionalEncoding.LEARNED else None
        )
        rotary = (
            RotaryEmbedding(self.head_dim, config.rope_theta, config.rope_scaling)
            if positional == PositionalEncoding.ROPE
            else None
        )
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(
                index,
                dim,
                self.n_head,
                self.n_head_kv,
                config.bias,
                config.dropout,
                norm,
                attention,
                mlp,
                rotary,
                config.qk_norm,
            )
            for index in range(n_layer)
        )
        self.final_norm = norm(dim=dim)
        # Holds nothing: where a tensor-parallel plan gathers the sequence-sharded activations for the output
        # projection, which, tied, is no module of its own to hang that on.
        self.head_input = nn.Identity()
        self.output = None if config.tie_embeddings else nn.Linear(dim, vocab_size, bias=False)
        self.document_masking, self.document_positions = config.document_masking, config.document_positions
        self.sequence_exchange: SequenceExchange | None = None
        # Every block's kernel is built from one node, so the first one's mask serves every layer; taken
        # before the blocks are wrapped.
        kernel = self.blocks[0].attention.kernel
        self._document_mask = getattr(kernel, "document_mask", None)
        if self.document_masking and not callable(self._document_mask):
            raise ConfigError(
                f"model.config.document_masking: the attention kernel {type(kernel).__name__} cannot mask documents "
                "(it has no document_mask(document_ids)); use SDPAttention, or set document_masking: false "
                "(docs/configuration.md, The model contract)"
            )
        # A model constructed directly starts from its scheme; the training build constructs on the meta
        # device, where this draws nothing, and initialises once after materialising.
        with torch.no_grad():
            self.init_weights()

    @property
    def tie_embeddings(self) -> bool:
        return self.output is None

    @property
    def uses_document_ids(self) -> bool:
        return self.document_masking or self.document_positions == DocumentPositions.RESTART

    def forward(
        self,
        input_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        document_ids: torch.Tensor | None = None,
        output_loss: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    ) -> Any:
        """``document_ids [B, T]`` (which document of a packed sample each input token is in, not decreasing
        along a row) apply ``document_masking`` and ``document_positions``; without them, one document. Under
        context parallelism (``apply_context_parallel``) ``input_ids`` are one chunk of each sequence and
        ``document_ids`` the whole sample's. With ``output_loss`` (the model contract's), what it returns for the
        output projection's input and weight, in place of the logits."""
        start = kv_cache.length if kv_cache is not None else 0
        # Under context parallelism the input is one chunk of a sequence ``degree`` times as long.
        exchange = self.sequence_exchange
        length = input_ids.shape[1] * (1 if exchange is None else exchange.degree)
        if start + length > self.sequence_length:
            raise ValueError(f"{start + length} positions exceed the model's sequence_length {self.sequence_length}")
        if exchange is not None and kv_cache is not None:
            raise ValueError("a KV cache is for sampling, which runs without context parallelism")
        positions = document_mask = None
        if document_ids is not None:
            if kv_cache is not None:
                raise ValueError("document_ids are for packed training samples; a KV cache holds one document")
            # The whole sample's documents: the attention layers see the whole sequence.
            if self.document_positions == DocumentPositions.RESTART:
                positions = positions_within_documents(document_ids)
            if self.document_masking:
                document_mask = self._document_mask(document_ids)
        hidden = self.embed(input_ids, start, positions)
        for index, block in enumerate(self.blocks):
            layer_cache = kv_cache.layers[index] if kv_cache is not None else None
            hidden = block(hidden, start, layer_cache, positions, document_mask)
        if kv_cache is not None:
            kv_cache.length = start + input_ids.shape[1]
        if output_loss is not None:
            return output_loss(self.head_input(self.final_norm(hidden)), self.output_weight)
        return self.head(hidden)

    def embed(self, input_ids: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream entering the first block: token (and learned position) embeddings, dropout. Under
        context parallelism ``input_ids`` are chunk ``exchange.rank`` of sequences ``exchange.degree`` times as
        long, and ``positions`` the whole sample's."""
        hidden = self.token_embedding(input_ids)
        if self.position_embedding is not None:
            exchange = self.sequence_exchange
            degree, rank = (1, 0) if exchange is None else (exchange.degree, exchange.rank)
            chunk_length = input_ids.shape[1]
            whole = (
                torch.arange(start, start + chunk_length * degree, device=input_ids.device)
                if positions is None
                else positions
            )
            hidden = hidden + self.position_embedding(whole[..., rank * chunk_length : (rank + 1) * chunk_length])
        return self.embedding_dropout(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits from the last block's output: final norm, output projection."""
        hidden = self.head_input(self.final_norm(hidden))
        if self.output is None:
            return F.linear(hidden, self.token_embedding.weight)
        # The module, not its weight: a tensor-parallel plan hooks it.
        return self.output(hidden)

    @property
    def output_weight(self) -> torch.Tensor:
        """The output projection's weight ``[V, D]``: the token embedding's when tied (``output_loss`` takes it)."""
        return self.token_embedding.weight if self.output is None else self.output.weight

    def init_weights(self) -> None:
        """(Re)initialise every parameter in place from the global RNG, in a fixed order.

        The same seed gives the same weights whether the model was built eagerly or on the meta device and
        materialised with ``to_empty`` (unsharded); call it under ``torch.no_grad()``.
        """
        self.weight_init.embedding_(self.token_embedding.weight)
        if self.position_embedding is not None:
            self.weight_init.embedding_(self.position_embedding.weight)
        for block in self.blocks:
            block.init_weights(self.weight_init)
        _init_modules(self.final_norm, self.weight_init)
        if self.output is not None:
            self.weight_init.linear_(self.output.weight)

    def new_kv_cache(self) -> KVCache:
        """An empty cache for generation, with room for ``sequence_length`` positions."""
        return KVCache(self.n_layer, self.sequence_length)

    def pipeline_stage(self, first_block: int, end_block: int) -> "DecoderStage":
        """Blocks ``first_block .. end_block - 1`` as a pipeline stage (the model contract's hook); raises
        ``ConfigError`` where the model cannot be cut there."""
        key = "parallelism.config.pipeline_parallel_degree"
        if self.uses_document_ids:
            raise ConfigError(
                f"model.config.document_masking and document_positions: restart cannot run with {key} > 1: the "
                "stages pass on only the residual stream, not the documents; set document_masking: false and "
                "document_positions: continue, or pipeline_parallel_degree: 1"
            )
        return DecoderStage(self, first_block, end_block)

    def tensor_parallel_plan(self, degree: int) -> dict[str, ParallelStyle]:
        """How ``parallelize_module`` splits this model over ``degree`` ranks (the model contract's plan).

        Megatron's layout with sequence parallelism: query, key, value and the MLP's inner projections split
        by output columns (each rank computes its share of the heads), the attention and MLP output
        projections by input rows, their partial sums reduce-scattered over the sequence; norms, dropout and
        the residual stream between blocks hold each rank's slice of the sequence. The token embedding (tied:
        the output projection too) is split by vocabulary rows, and the logits stay split by vocabulary, for a
        loss under ``loss_parallel``. Raises ``ConfigError`` where the model cannot be split ``degree`` ways.
        """
        self._check_splits(degree)
        # Learned positions are added to the whole sequence, before it is cut into the ranks' slices.
        embedded = Replicate() if self.position_embedding is not None else Shard(1)
        plan: dict[str, ParallelStyle] = {
            "token_embedding": RowwiseParallel(input_layouts=Replicate(), output_layouts=embedded),
            "embedding_dropout": PrepareModuleInput(
                input_layouts=(embedded,), desired_input_layouts=(Shard(1),), use_local_output=True
            ),
            "final_norm": SequenceParallel(),
            "head_input": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        }
        if self.position_embedding is not None:
            plan["position_embedding"] = ColwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        if self.output is not None:
            plan["output"] = ColwiseParallel(
                input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False
            )
        # The block's attention is called with (hidden, start, kv_cache, positions, document_mask): only the
        # hidden states are gathered; positions and masks cover the whole sequence already.
        attention_inputs = (Shard(1), None, None, None, None)
        block = {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(
                input_layouts=attention_inputs,
                desired_input_layouts=(Replicate(), *attention_inputs[1:]),
            ),
            "attention.query": ColwiseParallel(),
            "attention.key": ColwiseParallel(),
            "attention.value": ColwiseParallel(),
            "attention.output": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.output": RowwiseParallel(output_layouts=Shard(1)),
        }
        block |= {f"mlp.{name}": ColwiseParallel() for name in self._mlp_inner_projections()}
        return plan | {f"blocks.*.{name}": style for name, style in block.items()}

    def apply_context_parallel(self, exchange: SequenceExchange) -> None:
        """Take chunk ``exchange.rank`` of each sequence from now on (the model contract's context parallelism):
        every attention layer trades it for a share of the heads over the whole sequence and back, learned
        positions count from the chunk's first position. Raises ``ConfigError`` where the heads (each rank's,
        under tensor parallelism) do not divide ``exchange.degree`` ways."""
        self._check_heads_split(exchange.degree, exchange.tensor_parallel_degree)
        self.sequence_exchange = exchange
        for block in self.blocks:
            block.attention.sequence_exchange = exchange

    def _check_heads_split(self, degree: int, tensor_parallel: int) -> None:
        key = "parallelism.config.context_parallel_degree"
        split = f"{key} ({degree})" + (f" × tensor_parallel_degree ({tensor_parallel})" if tensor_parallel > 1 else "")
        problems = [
            f"model.config.{name} ({count}) is not divisible by {split}"
            for name, count in (("n_head", self.n_head), ("n_head_kv", self.n_head_kv))
            if count % (degree * tensor_parallel)
        ]
        if problems:
            raise ConfigError(
                "; ".join(problems) + f"; each rank attends with a share of the heads: choose a {key} that divides "
                "them, or change the model (docs/parallelism.md)"
            )

    def _mlp_inner_projections(self) -> list[str]:
        """The MLP's ``nn.Linear`` layers before its ``output``, if they are all it holds; else empty."""
        mlp = self.blocks[0].mlp
        linears = {name: child for name, child in mlp.named_children() if isinstance(child, nn.Linear)}
        own = {id(parameter) for child in linears.values() for parameter in child.parameters()}
        if "output" not in linears or any(id(parameter) not in own for parameter in mlp.parameters()):
            return []
        return [name for name in linears if name != "output"]

    def _check_splits(self, degree: int) -> None:
        key = "parallelism.config.tensor_parallel_degree"
        counts = {"n_head": self.n_head, "n_head_kv": self.n_head_kv, "vocab_size": self.vocab_size}
        problems = [
            f"model.config.{name} ({count}) is not divisible by {key} ({degree})"
            for name, count in counts.items()
            if count % degree
        ]
        mlp = self.blocks[0].mlp
        inner = self._mlp_inner_projections()
        if not inner:
            problems.append(
                f"model.config.mlp ({type(mlp).__name__}) cannot be split: tensor parallelism splits an MLP made of "
                "its own nn.Linear layers, the last one named output"
            )
        problems += [
            f"model.config.mlp's {name} layer ({getattr(mlp, name).out_features} features) is not divisible by "
            f"{key} ({degree})"
            for name in inner
            if getattr(mlp, name).out_features % degree
        ]
        if self.blocks[0].attention.query_norm is not None:
            problems.append(f"model.config.qk_norm: true cannot run with {key} > 1 (the head norms are not split)")
        if problems:
            raise ConfigError(
                "; ".join(problems) + f"; choose a {key} that divides them, or change the model (docs/parallelism.md)"
            )


class DecoderStage(nn.Module):
    """Blocks ``first_block .. end_block - 1`` of a ``DecoderLM``, with its embeddings when the stage is the first
    and its final norm and output projection (tied: the token embedding) when it is the last: the model's own
    modules under its own names.

    ``forward`` takes the token ids (first stage) or the residual stream, and returns the residual stream or the
    logits (last stage).
    """

    def __init__(self, model: DecoderLM, first_block: int, end_block: int):
        super().__init__()
        self.is_first, self.is_last = first_block == 0, end_block == model.n_layer
        if self.is_first:
            self.token_embedding = model.token_embedding
            self.position_embedding = model.position_embedding
            self.embedding_dropout = model.embedding_dropout
        self.blocks = nn.ModuleDict({str(index): model.blocks[index] for index in range(first_block, end_block)})
        if self.is_last:
            self.final_norm, self.head_input = model.final_norm, model.head_input
            if model.tie_embeddings:
                # The output projection is the token embedding: the first and the last stage each hold it, and
                # the pipeline sums its gradient over the two.
                self.token_embedding = model.token_embedding
            else:
                self.output = model.output
        # Bound methods, not modules: the stage holds only its own layers, which these call.
        self._embed, self._head = model.embed, model.head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self._embed(inputs) if self.is_first else inputs
        for block in self.blocks.values():
            hidden = block(hidden)
        return self._head(hidden) if self.is_last else hidden


MODELS = {"DecoderLM": (DecoderLM, DecoderLMConfig)}
