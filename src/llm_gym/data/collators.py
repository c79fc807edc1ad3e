"""Turning a list of samples into the batch a training step reads."""

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

IGNORE_INDEX = -100
"""A target that counts no token and adds no loss (``torch.nn.functional.cross_entropy``'s default)."""


class CausalLMCollator:
    """Samples of ``T + 1`` tokens become inputs ``tokens[:-1]`` and next-token targets ``tokens[1:]``, ``[B, T]``."""

    def __init__(self, input_key: str = "input_ids", target_key: str = "target_ids"):
        self.input_key, self.target_key = input_key, target_key

    def __call__(self, samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = torch.stack(samples)
        return {self.input_key: tokens[:, :-1].contiguous(), self.target_key: tokens[:, 1:].contiguous()}


class CausalLMCollatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_key: str = Field("input_ids", min_length=1)
    target_key: str = Field("target_ids", min_length=1)

    @model_validator(mode="after")
    def _distinct_keys(self) -> "CausalLMCollatorConfig":
        if self.input_key == self.target_key:
            raise ValueError(f"input_key and target_key must differ, both are '{self.input_key}'")
        return self


COLLATORS = {"CausalLMCollator": (CausalLMCollator, CausalLMCollatorConfig)}
