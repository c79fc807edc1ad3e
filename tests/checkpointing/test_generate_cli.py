"""`llm_gym generate`: any world size's checkpoint on one process, text streamed whole-character, seeded, greedy
equal to uncached generation; and every bad checkpoint (for `export_hf` too) is exit 2 with a message."""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from checkpoint_damage import edit_meta, flip_byte_in_the_middle, shard
from click.testing import CliRunner
from torch import nn

from llm_gym.cli import DEBUG_ENV, main
from llm_gym.data.tokenizers import ByteTokenizer
from llm_gym.inference.generation import generate
from llm_gym.inference.trained_model import load_trained_model, stream_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "")
    for variable in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)


def run_generate(checkpoint_path, prompt: str = "def ", *options: str):
    return CliRunner().invoke(
        main, ["generate", "--checkpoint_path", str(checkpoint_path), "--prompt", prompt, *options]
    )


def generated_text(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_two_rank_checkpoint_generates_on_one_process(gpt2_checkpoints):
    latest = gpt2_checkpoints / (gpt2_checkpoints / "latest").read_text().strip()
    assert json.loads((latest / "llm_gym_meta.json").read_text())["world_size"] == 2
    text = generated_text(run_generate(gpt2_checkpoints, "def ", "--max_new_tokens", "30"))
    assert text.startswith("def ") and text.endswith("\n")
    assert len(text) > len("def \n")
    assert not dist.is_initialized()


@pytest.mark.parametrize("sampling", [[], ["--top_k", "5"], ["--top_p", "0.9", "--temperature", "1.2"]])
def test_the_same_seed_gives_the_same_text(llama_checkpoints, sampling):
    def sample(seed: int) -> str:
        options = ["--max_new_tokens", "40", "--seed", str(seed), *sampling]
        return generated_text(run_generate(llama_checkpoints / "step_2", "class ", *options))

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


@pytest.mark.parametrize(
    "checkpoints",
    ["llama_checkpoints", pytest.param("gpt2_checkpoints", marks=pytest.mark.slow)],
    ids=["byte", "bpe"],
)
def test_greedy_text_equals_uncached_generation(checkpoints, request):
    checkpoint_root, prompt = request.getfixturevalue(checkpoints), "import "
    # 40 new tokens run past the sequence length (32), where generation slides its window.
    text = generated_text(run_generate(checkpoint_root, prompt, "--temperature", "0", "--max_new_tokens", "40"))
    trained = load_trained_model(checkpoint_root)
    tokenizer = trained.load_tokenizer()
    prompt_ids = tokenizer.encode(prompt)
    ids = generate(
        trained.model, torch.tensor([prompt_ids]), 40, temperature=0, eos_id=tokenizer.eos_id, use_cache=False
    )[0].tolist()
    new_ids = ids[len(prompt_ids) :]
    new_ids = new_ids[: new_ids.index(tokenizer.eos_id)] if tokenizer.eos_id in new_ids else new_ids
    assert text == prompt + tokenizer.decode(prompt_ids + new_ids)[len(tokenizer.decode(prompt_ids)) :] + "\n"


@pytest.mark.parametrize("prompt", ["", "x" * 100], ids=["empty", "longer_than_the_context"])
def test_empty_and_long_prompts(llama_checkpoints, prompt):
    assert generated_text(run_generate(llama_checkpoints, prompt, "--max_new_tokens", "5")).startswith(prompt)


class ScriptedModel(nn.Module):
    """Predicts the tokens of ``script`` one after another, whatever it is given."""

    sequence_length = 64

    def __init__(self, script: list[int], vocab_size: int = 257):
        super().__init__()
        self.script, self.vocab_size, self.calls = script, vocab_size, 0
        self.anchor = nn.Parameter(torch.zeros(1))  # tells the device

    def new_kv_cache(self) -> SimpleNamespace:
        return SimpleNamespace(length=0)

    def forward(self, input_ids: torch.Tensor, kv_cache: SimpleNamespace | None = None) -> torch.Tensor:
        if kv_cache is not None:
            kv_cache.length += input_ids.shape[1]
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[:, -1, self.script[self.calls]] = 1.0
        self.calls += 1
        return logits


def test_streamed_pieces_are_whole_characters_and_stop_at_end_of_text():
    tokenizer = ByteTokenizer()
    model = ScriptedModel([*"aé€b".encode(), tokenizer.eos_id, *b"zz"])
    pieces = list(stream_text(model, tokenizer, ">", max_new_tokens=20, temperature=0))
    assert pieces == ["a", "é", "€", "b"]


def test_an_unfinished_character_at_the_end_still_comes_out():
    tokenizer = ByteTokenizer()
    model = ScriptedModel([*b"a", "€".encode()[0]])
    assert "".join(stream_text(model, tokenizer, ">", max_new_tokens=2, temperature=0)) == "a\ufffd"


def test_sampling_options_out_of_range_are_usage_errors(llama_checkpoints):
    for options in (["--top_p", "0"], ["--top_k", "0"], ["--temperature", "-1"], ["--max_new_tokens", "-1"]):
        result = run_generate(llama_checkpoints, "a", *options)
        assert result.exit_code == 2 and result.stdout == "", options


# ---- bad checkpoints: what each command is given, after damaging a copy of a good checkpoints/ root ----------


def _latest(root):
    return root / (root / "latest").read_text().strip()


def _damaged(damage):
    """``damage(step_dir)``, then point the command at that directory."""

    def apply(root):
        damage(_latest(root))
        return _latest(root)

    return apply


def _latest_says(text):
    def apply(root):
        (root / "latest").write_text(text)
        return root

    return apply


def _set_model_option(key, value):
    def edit(meta):
        meta["resolved_config"]["model"]["config"][key] = value

    return _damaged(lambda c: edit_meta(c, edit))


BAD_CHECKPOINTS = {
    "missing": (lambda root: root / "absent", r"checkpoint directory .*absent does not exist"),
    "file": (lambda root: root / "latest", r"checkpoint path .*latest is not a directory"),
    "unfinished save": (_damaged(lambda c: (c / ".metadata").unlink()), r"not a complete checkpoint: it has no DCP"),
    "no meta": (_damaged(lambda c: (c / "llm_gym_meta.json").unlink()), r"llm_gym_meta\.json is missing"),
    "shard missing": (_damaged(lambda c: shard(c).unlink()), r"is corrupted: __0_0\.distcp is missing"),
    "shard truncated": (
        _damaged(lambda c: shard(c).write_bytes(shard(c).read_bytes()[:100])),
        r"__0_0\.distcp has 100 bytes, expected \d+ \(truncated\?\)",
    ),
    "shard bit flip": (_damaged(lambda c: flip_byte_in_the_middle(shard(c))), r"__0_0\.distcp fails its checksum"),
    "meta not json": (
        _damaged(lambda c: (c / "llm_gym_meta.json").write_text("{")),
        r"llm_gym_meta\.json is corrupted: not valid JSON",
    ),
    "latest corrupted": (
        _latest_says("../elsewhere\n"),
        r"latest is corrupted: it should name a checkpoint directory",
    ),
    "latest names a missing checkpoint": (
        _latest_says("step_99\n"),
        r"step_99 does not exist",
    ),
    "incompatible model": (
        _set_model_option("dim", 64),
        r"written by an incompatible model: different shapes: .*\(checkpoint \[\d+, 128\], model \[\d+, 64\]\)",
    ),
    "deeper model": (_set_model_option("n_layer", 3), r"incompatible model: not in the checkpoint: blocks\.2\."),
    "invalid model config": (
        _set_model_option("n_head", 0),
        r"config saved in .* is not valid for this llm_gym .*\n  model\.config\.n_head: Input should be greater than 0",
    ),
    "no model config": (
        _damaged(lambda c: edit_meta(c, lambda meta: meta.pop("resolved_config"))),
        r"has no model config .*only checkpoints written by `llm_gym run`",
    ),
    "tokenizer gone": (
        _damaged(lambda c: edit_meta(c, lambda meta: meta["resolved_config"]["data"].update(tokenizer="gone.json"))),
        r"the tokenizer this model was trained with, gone\.json \(relative to .*\), no longer exists: run from",
    ),
}


@pytest.mark.parametrize("command", ["generate", "export_hf"])
@pytest.mark.parametrize(("damage", "message"), BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS)
def test_bad_checkpoint_is_exit_2_with_a_message(llama_checkpoints, tmp_path, command, damage, message):
    root = tmp_path / "experiment" / "checkpoints"
    shutil.copytree(llama_checkpoints, root)
    checkpoint_path = damage(root)
    output_dir = tmp_path / "exported"  # outside the experiment, as export_hf wants
    command_options = ["--prompt", "a"] if command == "generate" else ["--output_dir", str(output_dir)]
    result = CliRunner().invoke(main, [command, "--checkpoint_path", str(checkpoint_path), *command_options])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert re.search(message, result.stderr), result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["experiment"]
