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

    Room to grow: what a later collator knows about its rows (document ids and positions, for attention
    that stays within a document) becomes a field here, ``None`` by default so that collators that do not
    know it need no change; ``to`` and ``pin_memory`` carry every tensor field along.
    """

    inputs: torch.Tensor
    targets: torch.Tensor

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


class CausalLMCollator:
    """Samples of ``T + 1`` tokens become inputs ``tokens[:-1]`` and next-token targets ``tokens[1:]``, ``[B, T]``."""

    def __call__(self, samples: list[torch.Tensor]) -> Batch:
        tokens = torch.stack(samples)
        return Batch(inputs=tokens[:, :-1].contiguous(), targets=tokens[:, 1:].contiguous())


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
