"""The optimizer state that validate's memory estimate counts per parameter."""

import pytest
import torch

from llm_gym.training.summary import optimizer_state_tensors


@pytest.mark.parametrize(
    ("optimizer_class", "settings", "expected"),
    [
        (torch.optim.AdamW, {}, (2, "AdamW: 2 fp32 moments")),
        (torch.optim.Adam, {"amsgrad": True}, (3, "Adam: 3 fp32 moments")),
        (torch.optim.SGD, {"momentum": 0.9}, (1, "SGD: a momentum buffer")),
        (torch.optim.SGD, {}, (0, "SGD: no state")),
        # An optimizer llm_gym does not know, as a user registers one: Adam-like state is assumed and said.
        (torch.optim.Adagrad, {}, (2, "Adagrad: assumed 2 fp32 state tensors")),
    ],
)
def test_state_tensors_per_parameter(optimizer_class, settings, expected):
    optimizer = optimizer_class(torch.nn.Linear(2, 2).parameters(), lr=0.1, **settings)
    assert optimizer_state_tensors(optimizer) == expected
