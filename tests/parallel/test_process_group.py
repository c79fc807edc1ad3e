import pytest

from llm_gym.errors import UserError
from llm_gym.parallel.distributed import init_distributed


def test_a_world_size_without_ranks_is_refused_instead_of_waiting_forever(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="WORLD_SIZE=4 is set but RANK is not"):
        init_distributed("cpu")
