"""A tiny trainable setup for checkpoint tests: Linear layers, AdamW, LambdaLR, a loader with a position."""

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from llm_gym.checkpointing import training_state

WIDTH = 16


class FakeLoader:
    """Stands in for the data loader: its state is global, the same on every rank."""

    def __init__(self) -> None:
        self.position = 0
        self.epoch = 0

    def next_batch(self, rank: int, world_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1000 * self.epoch + self.position)
        self.position += 1
        return torch.randn(4 * world_size, WIDTH, generator=generator)[rank::world_size]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch, "name": "fake", "shuffled": [3, 1, 2]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.epoch = state["position"], state["epoch"]


@dataclass
class Progress:
    step: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]


def make_model(width: int = WIDTH, depth: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(WIDTH if not layers else width, width), nn.Dropout(0.1)]
    layers.append(nn.Linear(width, 4))
    return nn.Sequential(*layers)


@dataclass
class Toy:
    model: nn.Module
    optimizer: torch.optim.Optimizer = field(init=False)
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    loader: FakeLoader = field(default_factory=FakeLoader)
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 / (1 + step))

    def state(self) -> dict:
        return training_state(self.model, self.optimizer, self.lr_scheduler, self.loader, self.progress)

    def train(self, steps: int, rank: int = 0, world_size: int = 1) -> list[float]:
        """Steps with dropout, so the result depends on the RNG state too."""
        losses = []
        for _ in range(steps):
            loss = self.model(self.loader.next_batch(rank, world_size)).pow(2).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.lr_scheduler.step()
            self.progress.step += 1
            self.progress.tokens_seen += 4 * world_size
            losses.append(loss.item())
        return losses


def full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def snapshot(toy: Toy) -> dict[str, Any]:
    """Everything a checkpoint restores, as plain full tensors and values."""
    optimizer_state = {
        f"{name}.{key}": full(value)
        for name, param in toy.model.named_parameters()
        for key, value in toy.optimizer.state.get(param, {}).items()
    }
    return {
        "params": {name: full(param) for name, param in toy.model.named_parameters()},
        "optimizer": optimizer_state,
        "lr": toy.lr_scheduler.get_last_lr(),
        "scheduler_epoch": toy.lr_scheduler.last_epoch,
        "loader": toy.loader.state_dict(),
        "progress": toy.progress.state_dict(),
    }


def assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same(value, actual[key])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, actual[key]), key
        else:
            assert value == actual[key], key
