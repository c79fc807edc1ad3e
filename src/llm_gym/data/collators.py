"""Turning a list of samples into the batch a training step reads."""

import dataclasses

import torch
from pydantic import BaseModel, ConfigDict, model_validator

IGNORE_INDEX = -100
"""A target that counts no token and adds no loss (``torch.nn.functional.cross_entropy``'s default)."""


@dataclasses.dataclass(frozen=True)
class Batch:
    """What a step reads: ``inputs`` and their next-token ``targets``, ``[B, T]`` each; a target of
    ``IGNORE_INDEX`` counts no token and adds no loss.

    What a collator knows about its rows beyond that is a field here, ``None`` by default so that collators
    that do not know it need no change; ``to`` and ``pin_memory`` carry every tensor field along.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    document_ids: torch.Tensor | None = None
    """``[B, T]`` int32: which document of its packed sample each input token is in, counted from 0 in each
    row (a model's ``forward(..., document_ids=...)``); the step passes it only when present."""

    def _tensors(self) -> dict[str, torch.Tensor]:
        fields = ((field.name, getattr(self, field.name)) for field in dataclasses.fields(self))
        return {name: value for name, value in fields if isinstance(value, torch.Tensor)}

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        moved = {name: value.to(device, non_blocking=non_blocking) for name, value in self._tensors().items()}
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> "Batch":
        """Called by torch's ``DataLoader`` with ``pin_memory=True``."""
        return dataclasses.replace(self, **{name: value.pin_memory() for name, value in self._tensors().items()})

    def target_tokens(self) -> int:
        """Targets that count: not ``IGNORE_INDEX``."""
        return int((self.targets != IGNORE_INDEX).sum())


def document_ids(inputs: torch.Tensor, end_of_document_id: int) -> torch.Tensor:
    """``[B, T]`` int32 document index of each token of ``inputs [B, T]``: an end-of-document token belongs to
    the document it ends, and the token after it starts the next one."""
    ends = inputs == end_of_document_id
    return ends.cumsum(dim=1, dtype=torch.int32) - ends.int()


class CausalLMCollator:
    """Samples of ``T + 1`` tokens become inputs ``tokens[:-1]`` and next-token targets ``tokens[1:]``, ``[B, T]``.

    Given ``end_of_document_id`` (the run passes the tokenizer's when the model reads documents), the batch
    also carries the ``document_ids`` of the inputs.
    """

    def __init__(self, end_of_document_id: int | None = None):
        self.end_of_document_id = end_of_document_id

    def __call__(self, samples: list[torch.Tensor]) -> Batch:
        tokens = torch.stack(samples)
        inputs = tokens[:, :-1].contiguous()
        documents = None if self.end_of_document_id is None else document_ids(inputs, self.end_of_document_id)
        return Batch(inputs=inputs, targets=tokens[:, 1:].contiguous(), document_ids=documents)


class CausalLMCollatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _batch_keys_were_replaced(cls, data: object) -> object:
        # Batches were dicts under these names; a typed Batch has fields instead, so no name is configurable.
        if isinstance(data, dict) and ("input_key" in data or "target_key" in data):
            raise ValueError(
                "input_key and target_key are gone: a batch is a Batch with fields inputs and targets now, "
                "not a dict of configurable keys; delete both keys (the collator needs no config)"
            )
        return data


COLLATORS = {"CausalLMCollator": (CausalLMCollator, CausalLMCollatorConfig)}
