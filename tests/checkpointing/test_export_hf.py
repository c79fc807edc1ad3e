"""`llm_gym export_hf`: trained checkpoints (one rank and two) load in transformers with llm_gym's logits; tokenizer
files when the run had a tokenizer.json; refusals leave nothing behind. Bad checkpoints: test_generate_cli.py."""

import sys

import pytest
import torch
from click.testing import CliRunner

from llm_gym.cli import DEBUG_ENV, main
from llm_gym.inference.generation import generate
from llm_gym.inference.trained_model import load_trained_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "")
    for variable in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)


def export(checkpoint_path, output_dir, *options: str):
    return CliRunner().invoke(
        main, ["export_hf", "--checkpoint_path", str(checkpoint_path), "--output_dir", str(output_dir), *options]
    )


def assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("checkpoints", "architecture", "tokenizer_files"),
    [
        ("llama_checkpoints", "LlamaForCausalLM", False),
        pytest.param("gpt2_checkpoints", "GPT2LMHeadModel", True, marks=pytest.mark.slow),
    ],
    ids=["llama", "gpt2"],
)
def test_export_loads_in_transformers_with_the_same_logits(
    checkpoints, architecture, tokenizer_files, request, tmp_path
):
    checkpoint_root, output_dir = request.getfixturevalue(checkpoints), tmp_path / "hf"
    result = export(checkpoint_root, output_dir)
    assert result.exit_code == 0, result.output
    assert f"wrote {output_dir}: {architecture}" in result.stdout
    assert ("no tokenizer files" in result.stdout) is not tokenizer_files
    files = {path.name for path in output_dir.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert ("tokenizer.json" in files) is tokenizer_files
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]  # no temporary directory left

    hf = transformers.AutoModelForCausalLM.from_pretrained(output_dir, local_files_only=True).eval()
    assert type(hf).__name__ == architecture
    model = load_trained_model(checkpoint_root).model
    tokens = torch.randint(0, model.vocab_size, (3, model.sequence_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_exported_tokenizer_and_generation_match_llm_gym(gpt2_checkpoints, tmp_path):
    assert export(gpt2_checkpoints, tmp_path).exit_code == 0  # an empty output directory is fine
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    trained = load_trained_model(gpt2_checkpoints)
    tokenizer = trained.load_tokenizer()
    text = "def main(argv):\n    return [x for x in argv if x] <|endoftext|>"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text)
    assert hf_tokenizer.eos_token_id == hf.config.eos_token_id == tokenizer.eos_id
    prompt = torch.tensor([tokenizer.encode("import ")])
    expected = generate(trained.model, prompt, 12, temperature=0, eos_id=tokenizer.eos_id)
    actual = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_id)
    assert actual.tolist() == expected.tolist()


def test_non_empty_output_directory_is_kept_unless_forced(llama_checkpoints, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert_user_error(export(llama_checkpoints, tmp_path), "exists and is not empty; pass --force to replace it")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert export(llama_checkpoints, tmp_path, "--force").exit_code == 0
    assert "notes.txt" not in {path.name for path in tmp_path.iterdir()}
    assert (tmp_path / "model.safetensors").is_file()


def test_output_path_that_is_a_file_is_refused(llama_checkpoints, tmp_path):
    (tmp_path / "model").write_text("mine")
    assert_user_error(export(llama_checkpoints, tmp_path / "model", "--force"), "exists and is not a directory")
    assert (tmp_path / "model").read_text() == "mine"


@pytest.mark.slow
def test_model_without_a_transformers_equivalent_is_refused(unexportable_checkpoints, tmp_path):
    assert_user_error(
        export(unexportable_checkpoints, tmp_path / "hf"), "this model cannot be expressed in transformers"
    )
    assert list(tmp_path.iterdir()) == []


def test_missing_transformers_says_how_to_install_it(llama_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    assert_user_error(export(llama_checkpoints, tmp_path / "hf"), "pip install 'llm_gym[hf]'")
    assert list(tmp_path.iterdir()) == []


def test_directories_beside_the_output_are_left_alone(llama_checkpoints, tmp_path):
    """The export's temporary directories get fresh names: one of the user's with the old fixed name stays."""
    for name in (".tmp_hf", ".tmp_replaced_hf"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("mine")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("replaced")
    assert export(llama_checkpoints, tmp_path / "hf", "--force").exit_code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [".tmp_hf", ".tmp_replaced_hf", "hf"]
    assert (tmp_path / ".tmp_hf" / "mine.txt").read_text() == (tmp_path / ".tmp_replaced_hf" / "mine.txt").read_text()
    assert "old.txt" not in {path.name for path in (tmp_path / "hf").iterdir()}


@pytest.mark.slow
def test_output_holding_the_runs_tokenizer_is_refused(gpt2_checkpoints, bpe_corpus):
    """--force would replace the tokenizer's directory, which the run and this export read."""
    before = sorted(path.name for path in bpe_corpus.iterdir())
    assert_user_error(
        export(gpt2_checkpoints, bpe_corpus, "--force"),
        f"output directory {bpe_corpus} is, contains or lies inside the run's tokenizer",
    )
    assert sorted(path.name for path in bpe_corpus.iterdir()) == before
