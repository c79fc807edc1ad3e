"""The model contract (models/contract.py): what any model must provide, checked once when it is built."""

import sys

import pytest
import torch
from click.testing import CliRunner
from model_builders import GPT2_STYLE, LLAMA_STYLE, build

from experiment_runs import TINY_CONFIG
from llm_gym.cli import main
from llm_gym.errors import ConfigError
from llm_gym.models.contract import LanguageModel, as_language_model


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE])
def test_decoder_lm_provides_the_contract(style):
    model = build(style)
    assert as_language_model(model) is model


class _Partial(torch.nn.Module):
    """Has blocks and a vocabulary, and nothing else of the contract."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
        self.vocab_size = 8
        self.n_layer = True  # a flag, not a count


def test_what_is_missing_is_named():
    with pytest.raises(ConfigError) as caught:
        as_language_model(_Partial())
    assert str(caught.value) == (
        "model: _Partial does not provide what llm_gym needs of a model; it lacks sequence_length (int), "
        "n_layer (int), n_head (int), head_dim (int), dim (int), init_weights(), new_kv_cache() "
        "(docs/configuration.md, The model contract)"
    )


def test_a_model_must_be_a_module():
    with pytest.raises(ConfigError, match=r"lacks to be a torch.nn.Module, vocab_size \(int\)"):
        as_language_model(object())


def test_the_check_reads_the_protocol_so_a_new_member_is_checked_too(monkeypatch):
    # Where the next hooks go (pipeline cuts): a member of LanguageModel is checked.
    from llm_gym.models import contract

    monkeypatch.setattr(contract, "_METHODS", (*contract._METHODS, "pipeline_split_points"))
    with pytest.raises(ConfigError, match=r"lacks pipeline_split_points\(\)"):
        as_language_model(build(GPT2_STYLE))
    assert "blocks" in LanguageModel.__annotations__


def test_the_tensor_parallel_plan_is_checked_only_when_asked_for(monkeypatch):
    model = build(GPT2_STYLE)
    assert as_language_model(model, tensor_parallel=True) is model
    monkeypatch.setattr(type(model), "tensor_parallel_plan", None)
    assert as_language_model(model) is model
    with pytest.raises(ConfigError, match=r"lacks tensor_parallel_plan\(degree\), which parallelism.config.tensor_"):
        as_language_model(model, tensor_parallel=True)


USER_MODEL = """
import torch
from llm_gym.registry import register_component


@register_component("model", "Bigram")
class Bigram(torch.nn.Module):
    def __init__(self, vocab_size: int = 257):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, input_ids, kv_cache=None):
        return self.table(input_ids)
"""


@pytest.fixture
def user_module_cleanup(monkeypatch, fresh_registry):
    """Like ``isolated_imports`` for one module only: validate imports torch modules that must stay imported."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("my_models", None)


def test_a_user_model_without_the_contract_is_refused_by_validate(tmp_path, user_module_cleanup):
    config = tmp_path / "run.yaml"
    config.write_text(f"defaults: [{TINY_CONFIG}]\n")
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    overrides = ["user_modules=[my_models]", "model={type_hint: Bigram}", "~model.config"]
    result = CliRunner().invoke(main, ["validate", "--config_file_path", str(config), *overrides])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: model: Bigram does not provide what llm_gym needs of a model; it lacks sequence_length (int), "
        "blocks (ModuleList), n_layer (int), n_head (int), head_dim (int), dim (int), init_weights(), "
        "new_kv_cache() (docs/configuration.md, The model contract)"
    )
