"""``llm_gym evaluate``: score a checkpoint on corpora and tasks, one process or every rank under torchrun."""

import importlib.util
from pathlib import Path

import click

from llm_gym.cli.options import checkpoint_path_option, user_modules_option


@click.command()
@checkpoint_path_option
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    metavar="SPLIT|PREFIX",
    help="A split of the run's data.eval_datasets, or a tokenized corpus PREFIX(.bin/.idx); repeatable. "
    "Default, without --tasks: every split of the run.",
)
@click.option(
    "--tasks",
    "tasks",
    multiple=True,
    metavar="[NAME=][FORMAT:]PATH",
    help="A multiple-choice task file; FORMAT jsonl (default), hellaswag, arc, piqa or code_lines; repeatable.",
)
@click.option(
    "--harness_tasks",
    default=None,
    metavar="TASK[,TASK...]",
    help="lm-evaluation-harness tasks (needs pip install 'llm_gym[harness]').",
)
@click.option(
    "--harness_include_path",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A directory of lm-evaluation-harness task YAML files (tasks of your own, on local data files).",
)
@click.option("--max_samples", type=click.IntRange(min=1), default=None, help="Per corpus, its first N samples.")
@click.option(
    "--max_examples",
    type=click.IntRange(min=1),
    default=None,
    help="Per task (harness tasks too), its first N examples.",
)
@click.option(
    "--micro_batch_size",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per forward pass (default: the run's training.micro_batch_size).",
)
@click.option(
    "--output_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON file to write (default: <experiment>/evaluations/step_<N>_<request>.json).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@user_modules_option
def evaluate(
    checkpoint_path: Path,
    prefixes: tuple[str, ...],
    tasks: tuple[str, ...],
    harness_tasks: str | None,
    harness_include_path: Path | None,
    max_samples: int | None,
    max_examples: int | None,
    micro_batch_size: int | None,
    output_path: Path | None,
    device: str,
    user_modules: tuple[str, ...],
) -> None:
    """Score a checkpoint: loss, perplexity and bits per byte on corpora, accuracy on multiple-choice tasks."""
    from llm_gym.inference.evaluation import EvaluationRequest, TaskSpec, evaluate_checkpoint
    from llm_gym.inference.evaluation_report import report_lines, write_report
    from llm_gym.parallel.distributed import destroy_distributed, init_distributed

    request = EvaluationRequest(
        prefixes=prefixes,
        tasks=[TaskSpec.parse(task) for task in tasks],
        harness_tasks=[task for task in (harness_tasks or "").split(",") if task],
        harness_include_path=harness_include_path,
        max_samples=max_samples,
        max_examples=max_examples,
        micro_batch_size=micro_batch_size,
    )
    harness = None
    if request.harness_tasks and importlib.util.find_spec("lm_eval") is not None:
        # Without lm-evaluation-harness, evaluate_checkpoint says what to install.
        from llm_gym.inference.harness import run_harness_tasks as harness
    env = init_distributed(device)
    try:
        report = evaluate_checkpoint(checkpoint_path, request, env, output_path, harness, user_modules)
        if env.is_main_process:
            write_report(report, report.path)
            for line in report_lines(report):
                click.echo(line)
            click.echo(f"wrote {report.path}")
    finally:
        destroy_distributed()
