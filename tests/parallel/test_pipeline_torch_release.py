"""On a torch older than pipelining needs, llm_gym refuses a pipeline (test_pipeline_parallel.py skips there)."""

import pytest
import torch

from llm_gym.errors import UserError
from llm_gym.parallel.distributed import DistributedEnvironment, torch_release
from llm_gym.parallel.strategies import FSDP2, PIPELINING_MIN_TORCH, FSDP2Config


@pytest.mark.skipif(torch_release() >= PIPELINING_MIN_TORCH, reason="this torch runs pipelines")
def test_older_torch_refuses_a_pipeline_with_the_release_it_needs():
    environment = DistributedEnvironment(0, 0, 2, 2, torch.device("cpu"))
    with pytest.raises(UserError, match=r"pipeline_parallel_degree > 1 needs torch >= 2\.13"):
        FSDP2(FSDP2Config(pipeline_parallel_degree=2), environment)
