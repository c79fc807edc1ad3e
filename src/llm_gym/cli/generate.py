"""``llm_gym generate``: sample text from a checkpoint on one process."""

from pathlib import Path

import click

from llm_gym.cli.options import checkpoint_path_option, user_modules_option


@click.command()
@checkpoint_path_option
@click.option("--prompt", required=True, help="Text to continue; empty starts a new document.")
@click.option("--max_new_tokens", type=click.IntRange(min=0), default=200, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.8,
    show_default=True,
    help="0 = greedy (always the likeliest).",
)
@click.option("--top_k", type=click.IntRange(min=1), default=None, help="Sample among the k likeliest tokens only.")
@click.option(
    "--top_p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=None,
    help="Sample among the likeliest tokens that together reach this probability (nucleus).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed gives the same text.")
@user_modules_option
def generate(
    checkpoint_path: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    user_modules: tuple[str, ...],
) -> None:
    """Sample text from a checkpoint (written by any number of ranks), streamed as it is generated."""
    from llm_gym.inference.trained_model import load_trained_model, stream_text
    from llm_gym.parallel.distributed import select_device

    trained = load_trained_model(checkpoint_path, select_device("auto", local_rank=0), user_modules)
    tokenizer = trained.load_tokenizer()
    # Checks the options and the prompt before anything is printed.
    pieces = stream_text(trained.model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    click.echo(f"{trained.checkpoint_dir} (step {trained.step}) on {next(trained.model.parameters()).device}", err=True)
    click.echo(prompt, nl=False)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()
