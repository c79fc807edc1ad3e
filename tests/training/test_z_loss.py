"""The z-loss against a hand computation: its value, what it adds to the gradient, and that evaluation and the
reported loss stay the cross-entropy alone."""

import math

import pytest
import torch
from torch import nn

from distributed import run_on_ranks
from llm_gym.data.collators import Batch
from llm_gym.parallel.distributed import init_distributed
from llm_gym.parallel.strategies import NoParallelism, NoParallelismConfig
from llm_gym.training.step import evaluate, train_step

# The step computes the loss in float32: agreement to 1e-6.
LOGITS = [[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, -2.0, 0.0]]]  # one sample, three positions, three ids
TARGETS = [[0, 2, -100]]  # the last position is ignored
WEIGHT = 0.1


class FixedLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(LOGITS, dtype=torch.float64))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits


def _step(weight: float) -> tuple:
    strategy = NoParallelism(NoParallelismConfig(), init_distributed("cpu"))
    model = FixedLogits()
    batch = Batch(inputs=torch.zeros(1, 3, dtype=torch.long), targets=torch.tensor(TARGETS))
    result = train_step(model, strategy, [batch], max_grad_norm=None, z_loss_weight=weight).read()
    evaluation = evaluate(model, strategy, [batch])
    return result, model.logits.grad.tolist(), evaluation


def test_the_z_loss_is_the_weighted_square_of_log_z_per_target_token():
    result, gradient, evaluation = run_on_ranks(_step, 1, WEIGHT)[0]

    log_z = [math.log(sum(math.exp(x) for x in row)) for row in LOGITS[0]]
    cross_entropy = [log_z[0] - LOGITS[0][0][0], log_z[1] - LOGITS[0][1][2]]  # the two target tokens
    assert result.tokens == 2
    assert result.loss == pytest.approx(sum(cross_entropy) / 2, rel=1e-6)
    assert result.loss_sum == pytest.approx(sum(cross_entropy), rel=1e-6)
    assert result.z_loss_sum == pytest.approx(WEIGHT * (log_z[0] ** 2 + log_z[1] ** 2), rel=1e-6)
    assert evaluation == pytest.approx(result.loss, rel=1e-6)  # evaluation is the cross-entropy alone
    # d/dx of (CE + w·log²Z) / tokens: softmax − one-hot + 2w·log Z·softmax; nothing for the ignored position.
    for position, target in ((0, 0), (1, 2)):
        softmax = [math.exp(x - log_z[position]) for x in LOGITS[0][position]]
        expected = [(p - (index == target) + 2 * WEIGHT * log_z[position] * p) / 2 for index, p in enumerate(softmax)]
        assert gradient[0][position] == pytest.approx(expected, rel=1e-6)
    assert gradient[0][2] == [0.0, 0.0, 0.0]


def test_without_a_weight_nothing_is_added():
    with_weight, without = run_on_ranks(_step, 1, WEIGHT)[0], run_on_ranks(_step, 1, 0.0)[0]
    assert without[0].z_loss_sum == 0.0 and without[0].loss == with_weight[0].loss
    assert without[1] != with_weight[1]
