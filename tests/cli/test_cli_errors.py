"""Every kind of bad config through the real CLI: exit status 2, one `error:` message naming the key, no traceback."""

import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from llm_gym.cli import DEBUG_ENV, main
from llm_gym.cli.group import CommandGroup
from llm_gym.errors import RankLocalError, UserError

TINY_CPU_CONFIG = str(Path(__file__).resolve().parents[2] / "config_files" / "tiny_cpu.yaml")

VALID_SECTIONS = """
experiment:
  output_dir: ${oc.env:TMPDIR,/tmp}/never_written
training:
  max_steps: 10
  sequence_length: 8
  micro_batch_size: 2
  eval_interval: 5
optimizer:
  type_hint: AdamW
  config:
    lr: 1.0e-3
"""


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    # `--debug` sets the variable for the rest of the process; monkeypatch removes it again afterwards.
    monkeypatch.setenv(DEBUG_ENV, "")
    for variable in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)


def validate(*args: str):
    return CliRunner().invoke(main, ["validate", *args])


def assert_user_error(result, tmp_path=None, files=()):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    if tmp_path is not None:  # validate writes nothing, least of all on failure
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(files)
    return result.stderr


def error_lines(result) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines()]


def test_missing_file(tmp_path):
    stderr = assert_user_error(validate("--config_file_path", str(tmp_path / "absent.yaml")), tmp_path)
    assert stderr == f"error: config file not found: {tmp_path / 'absent.yaml'}\n"


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    stderr = assert_user_error(validate("--config_file_path", str(path)), tmp_path, ["config.yaml"])
    assert stderr == f"error: cannot read {path}: not UTF-8 text (invalid start byte at byte 0)\n"


def test_yaml_syntax_error_names_file_and_line(write_config, tmp_path):
    path = write_config("training:\n  max_steps: 10\n  sequence_length: [8\n")
    stderr = assert_user_error(validate("--config_file_path", str(path)), tmp_path, ["config.yaml"])
    assert stderr.startswith(f"error: YAML syntax error in {path} at line 4")
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize("override", ["training.max_steps", "=3", "training..max_steps=3"])
def test_bad_override_syntax(write_config, override):
    stderr = assert_user_error(validate("--config_file_path", str(write_config(VALID_SECTIONS)), override))
    assert stderr == f"error: bad override '{override}': expected dotted.key=value, e.g. training.max_steps=100\n"


def test_unresolvable_interpolation(write_config):
    path = write_config(VALID_SECTIONS.replace("eval_interval: 5", "eval_interval: ${training.eval_every}"))
    stderr = assert_user_error(validate("--config_file_path", str(path)))
    assert stderr == (
        "error: training.eval_interval: cannot resolve interpolation: "
        "Interpolation key 'training.eval_every' not found; the file has 'training.eval_interval', a typo?\n"
    )


def test_an_interpolation_of_a_misspelt_key_names_the_near_miss(write_config):
    text = VALID_SECTIONS.replace("max_steps: 10", "max_stepz: 10") + "lr_scheduler_steps: ${training.max_steps}\n"
    stderr = assert_user_error(validate("--config_file_path", str(write_config(text))))
    assert stderr == (
        "error: lr_scheduler_steps: cannot resolve interpolation: Interpolation key 'training.max_steps' not found; "
        "the file has 'training.max_stepz', a typo?\n"
    )


def test_unknown_key(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "training.max_step=3")
    assert_user_error(result)
    assert error_lines(result)[0].startswith("error: invalid config (")
    assert "training.max_step: unknown key; did you mean 'max_steps'?" in error_lines(result)


def test_unknown_key_in_a_large_section_lists_nothing(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "training.zzz=3")
    assert "training.zzz: unknown key" in error_lines(result)  # training has too many keys to list


def test_wrong_type(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "training.micro_batch_size=two")
    assert_user_error(result)
    assert (
        "training.micro_batch_size: Input should be a valid integer, unable to parse string as an integer (got 'two')"
        in error_lines(result)
    )


def test_out_of_range(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "training.max_steps=0")
    assert_user_error(result)
    assert "training.max_steps: Input should be greater than 0 (got 0)" in error_lines(result)


def test_unknown_type_hint_lists_valid_names(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "optimizer.type_hint=AdamWW")
    assert_user_error(result)
    assert (
        "optimizer: unknown type_hint 'AdamWW' for 'optimizer'; did you mean 'AdamW'? "
        "valid names: Adam, AdamW, Muon, SGD" in error_lines(result)
    )
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "optimizer.type_hint=Lion")
    lion = "optimizer: unknown type_hint 'Lion' for 'optimizer'; valid names: Adam, AdamW, Muon, SGD"
    assert lion in error_lines(result)


def test_component_config_error_names_the_full_path(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "optimizer.config.eps=-1")
    assert_user_error(result)
    assert "optimizer.config.eps: Input should be greater than 0 (got -1)" in error_lines(result)


def test_world_size_must_be_positive(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "--world_size", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "validate", "--config_file_path", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith(f"error: config file not found: {tmp_path / 'absent.yaml'}")


def test_only_rank_zero_reports_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    result = validate("--config_file_path", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2
    assert result.stderr == ""


def groups(group: click.Group = main, path: tuple[str, ...] = ()):
    """Every group of the command line, with the arguments that reach it: (), ("data",)."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from groups(command, (*path, name))


@pytest.mark.parametrize(("path", "group"), list(groups()), ids=lambda value: getattr(value, "name", None))
def test_help_lists_every_command_with_its_whole_purpose(path, group):
    assert isinstance(group, CommandGroup)  # user errors handled, and help written, the same way everywhere
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    for name, command in group.commands.items():
        assert f"  {name} " in commands
        assert command.help, f"{name} has no docstring"
    assert "..." not in commands


# A command that fails by a bug, not a user's mistake, run as a real process so the traceback is what reaches stderr.
FAILING_COMMAND = """
import sys
from llm_gym.cli import main

@main.command("fail")
def fail():
    raise RuntimeError("an internal error")

main([*sys.argv[1:], "fail"], prog_name="llm_gym")
"""


@pytest.mark.parametrize("args", [[], ["--debug"]], ids=["plain", "debug"])
def test_internal_error_exits_1_with_its_traceback(args):
    result = subprocess.run([sys.executable, "-c", FAILING_COMMAND, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("RuntimeError: an internal error")


@pytest.mark.parametrize(
    "command",
    [
        ["data", "tokenize", "--tokenizer", "byte", "--output_prefix", "{file}/out", "--num_workers", "0"],
        ["data", "train_tokenizer", "--vocab_size", "300", "--output_path", "{file}/tokenizer.json"],
    ],
    ids=["tokenize", "train_tokenizer"],
)
def test_an_output_path_under_a_file_is_a_user_error(tmp_path, command):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "hello"}\n')
    args = [part.format(file=inputs) for part in command]
    result = CliRunner().invoke(main, [*args[:2], "--input", str(inputs), *args[2:]])
    stderr = assert_user_error(result, tmp_path, files=["in.jsonl"])
    assert stderr == f"error: cannot use {inputs}: it exists and is not a directory\n"


def test_a_file_error_without_a_path_stays_an_internal_error():
    result = CliRunner().invoke(_failing_group(OSError("no path involved")), ["fail"])
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


@pytest.mark.parametrize("count", [0, -2])
def test_keep_last_strategy_must_keep_one_or_all(write_config, count):
    strategies = f"checkpointing.strategies=[{{type_hint: KeepLast, config: {{count: {count}}}}}]"
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), strategies)
    assert_user_error(result)
    expected = {
        0: "must be -1 (keep all) or at least 1 (got 0)",
        -2: "Input should be greater than or equal to -1 (got -2)",
    }[count]
    assert f"checkpointing.strategies[0].config.count: {expected}" in error_lines(result)


def test_keep_last_setting_must_keep_one_or_all(write_config):
    result = validate("--config_file_path", str(write_config(VALID_SECTIONS)), "checkpointing.keep_last=0")
    assert_user_error(result)
    assert "checkpointing.keep_last: must be -1 (keep all) or at least 1 (got 0)" in error_lines(result)


def test_meta_device_init_with_ddp_is_refused_naming_the_key_and_the_strategies_that_support_it():
    result = validate(
        "--config_file_path", TINY_CPU_CONFIG, "training.meta_device_init=true", "parallelism.type_hint=DDP"
    )
    assert_user_error(result)
    assert (
        "training.meta_device_init: true cannot run with parallelism DDP, which needs the weights when it "
        "wraps the model; use a parallelism that supports it (FSDP2, HSDP, NoParallelism) or "
        "training.meta_device_init: false"
    ) in error_lines(result)


@pytest.mark.parametrize("strategy", ["FSDP2", "HSDP", "NoParallelism"])
def test_meta_device_init_is_accepted_with_the_strategies_that_materialise_after_wrapping(strategy):
    result = validate(
        "--config_file_path",
        TINY_CPU_CONFIG,
        "training.meta_device_init=true",
        f"parallelism.type_hint={strategy}",
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("strategy", "accepted"), [("DDP", False), ("NoParallelism", False), ("HSDP", True)])
def test_reduce_dtype_is_refused_where_no_gradient_is_reduced_in_it(strategy, accepted):
    result = validate(
        "--config_file_path",
        TINY_CPU_CONFIG,
        f"parallelism.type_hint={strategy}",
        "parallelism.config.mixed_precision.reduce_dtype=bfloat16",
    )
    if accepted:
        assert result.exit_code == 0, result.output
    else:
        assert_user_error(result)
        assert (
            "parallelism.config: mixed_precision.reduce_dtype is for FSDP2 and HSDP, which reduce gradients in it; "
            "with this strategy the parameters, and so their gradients, stay float32"
        ) in error_lines(result)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.config.sequence_length=64",
            "training.sequence_length (128) exceeds model.config.sequence_length (64), the longest sequence the "
            "model takes; shorten the one or lengthen the other",
        ),
        (
            "training.eval_batches=4",  # the key eval_samples replaced
            "training: training.eval_batches was replaced by training.eval_samples, which counts samples: "
            "eval_batches × micro_batch_size × ranks evaluates as much as before",
        ),
    ],
    ids=["model_shorter_than_the_sequence", "replaced_eval_batches"],
)
def test_settings_that_contradict_each_other_or_are_gone_are_refused_with_the_way_out(override, expected):
    result = validate("--config_file_path", TINY_CPU_CONFIG, override)
    assert_user_error(result)
    assert expected in error_lines(result)


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(tmp_path):
    from llm_gym.data.tokenizer_training import train_bpe_tokenizer

    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"text": "hello world, hello there, well held"}\n' * 20)
    tokenizer = tmp_path / "tokenizer.json"
    vocab = train_bpe_tokenizer([corpus], 300, tokenizer)
    result = validate("--config_file_path", TINY_CPU_CONFIG, f"data.tokenizer={tokenizer}")  # model: 257 ids
    assert_user_error(result)
    assert error_lines(result) == [
        f"error: tokenizer {tokenizer} has {vocab} ids but model.config.vocab_size is 257: text it encodes may "
        "hold ids the model cannot embed; use the tokenizer the model is configured for, or a "
        f"model.config.vocab_size of at least {vocab}"
    ]
    fitting = validate(
        "--config_file_path", TINY_CPU_CONFIG, f"data.tokenizer={tokenizer}", f"model.config.vocab_size={vocab}"
    )
    assert fitting.exit_code == 0 and f"data.tokenizer: {tokenizer}, {vocab} ids" in fitting.stdout


def test_a_tokenizer_that_is_not_here_is_reported_not_refused(tmp_path):
    # Training reads token ids only; generate and export_hf need the file later, wherever they run.
    result = validate("--config_file_path", TINY_CPU_CONFIG, f"data.tokenizer={tmp_path / 'absent.json'}")
    assert result.exit_code == 0, result.output
    assert f"data.tokenizer: {tmp_path / 'absent.json'} is not here (generate and export_hf will need it)" in (
        result.stdout
    )


def _failing_group(error: Exception) -> click.Group:
    @click.group(cls=CommandGroup)
    def group():
        pass

    @group.command()
    def fail():
        raise error

    return group


@pytest.mark.parametrize(
    ("error", "rank_1_says"),
    [
        (UserError("the checkpoint is missing"), ""),  # met alike on every rank: rank 0 says it
        (RankLocalError("token id 300 in a train batch"), "error (rank 1): token id 300 in a train batch\n"),
        (
            OSError(28, "No space left on device", "/local/ckpt"),
            "error (rank 1): cannot use /local/ckpt: No space left on device\n",
        ),
    ],
)
def test_a_problem_of_one_rank_is_said_by_that_rank(monkeypatch, error, rank_1_says):
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(_failing_group(error), ["fail"])
    assert result.exit_code == 2 and result.stderr == rank_1_says


def test_a_failed_rename_names_both_paths():
    error = OSError(18, "Invalid cross-device link", "/a/partial", None, "/b/final")
    result = CliRunner().invoke(_failing_group(error), ["fail"])
    assert result.stderr == "error: cannot use /a/partial or /b/final: Invalid cross-device link\n"


def test_data_commands_handle_sigterm_only_while_they_run(tmp_path):
    # The handler turning SIGTERM into an interrupt is the command's; whoever invoked it gets theirs back.
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["data", "demo_corpus", "--output_dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert signal.getsignal(signal.SIGTERM) is before
