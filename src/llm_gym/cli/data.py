"""``llm_gym data ...``: get a corpus, train a tokenizer, tokenize into ``.bin/.idx``, inspect the result."""

import signal
import threading
from pathlib import Path

import click

from llm_gym.cli.group import CommandGroup

input_option = click.option(
    "--input",
    "inputs",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="A .jsonl, .jsonl.gz or .txt file; repeat the option for several, read in the order given.",
)
text_key_option = click.option(
    "--text_key", default="text", show_default=True, help="The JSON key holding each document's text."
)
force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")


@click.group(cls=CommandGroup)
@click.pass_context
def data(ctx: click.Context) -> None:
    """Prepare training data: corpus, tokenizer, tokenized files."""
    # A cluster ends a job with SIGTERM, which by default kills without cleanup: as an interrupt, it lets the
    # command remove its partial outputs and stop its worker processes, as Ctrl-C does.
    if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
        previous = signal.signal(signal.SIGTERM, _interrupt)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@data.command("demo_corpus")
@click.option("--output_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@force_option
def demo_corpus(output_dir: Path, force: bool) -> None:
    """Write train/val/test.jsonl from this Python's standard library sources (no download)."""
    from llm_gym.data.demo_corpus import SPLITS, write_demo_corpus

    summary = write_demo_corpus(output_dir, force)
    click.echo(f"source: {summary.source} ({summary.skipped} empty or non-UTF-8 files left out)")
    for split in SPLITS:
        click.echo(
            f"{output_dir / f'{split}.jsonl'}: {summary.documents[split]:,} documents, "
            f"{summary.characters[split]:,} characters"
        )


@data.command("train_tokenizer")
@input_option
@click.option("--vocab_size", type=click.IntRange(min=1), required=True, help="Tokens in the vocabulary.")
@click.option("--output_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@text_key_option
@force_option
def train_tokenizer(inputs: tuple[Path, ...], vocab_size: int, output_path: Path, text_key: str, force: bool) -> None:
    """Train a byte-level BPE tokenizer (with <|endoftext|>) and save it as a tokenizer.json."""
    from llm_gym.data.tokenizer_training import train_bpe_tokenizer

    reached = train_bpe_tokenizer(inputs, vocab_size, output_path, text_key, force)
    note = "" if reached == vocab_size else f" (of {vocab_size:,} asked: the input allows no more merges)"
    click.echo(f"{output_path}: byte-level BPE, {reached:,} tokens{note}")


@data.command("tokenize")
@input_option
@click.option("--tokenizer", "tokenizer_spec", required=True, help="'byte', or the path of a tokenizer.json.")
@click.option(
    "--output_prefix",
    type=click.Path(),  # kept as written: a trailing slash (a directory, refused) must reach the check
    required=True,
    help="Writes PREFIX.bin + .idx.",
)
@text_key_option
@click.option(
    "--num_workers",
    type=click.IntRange(min=0),
    default=None,
    help="Tokenizing processes [default: the usable cores]; 0 tokenizes in this process.",
)
@click.option(
    "--on_error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="On a bad document (malformed JSON, missing key, invalid UTF-8, empty): stop, or skip and count it.",
)
@force_option
def tokenize(
    inputs: tuple[Path, ...],
    tokenizer_spec: str,
    output_prefix: str,
    text_key: str,
    num_workers: int | None,
    on_error: str,
    force: bool,
) -> None:
    """Tokenize documents into PREFIX.bin/.idx (Megatron-LM indexed format), EOS after each document."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from llm_gym.data.tokenization import tokenize_files

    total_bytes = sum(path.stat().st_size for path in inputs if path.is_file())
    counts = {"documents": 0, "tokens": 0}
    console = Console(stderr=True)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[documents]:,} docs · {task.fields[tokens]:,} tokens · {task.fields[rate]:.1f} MB/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("tokenizing", total=total_bytes, documents=0, tokens=0, rate=0.0)

        def report(update) -> None:
            counts["documents"] += update.documents
            counts["tokens"] += update.tokens
            progress.update(task, advance=update.input_bytes, **counts)
            elapsed = progress.tasks[task].elapsed or 0.0
            progress.update(task, rate=progress.tasks[task].completed / 1e6 / max(elapsed, 1e-9))

        summary = tokenize_files(
            inputs, tokenizer_spec, output_prefix, text_key, num_workers, on_error, force, on_progress=report
        )
    click.echo(
        f"{output_prefix}.bin/.idx: {summary.documents:,} documents, {summary.tokens:,} tokens ({summary.dtype}), "
        f"{summary.input_bytes / 1e6:.1f} MB in {summary.seconds:.1f} s ({summary.megabytes_per_s:.1f} MB/s, "
        f"{summary.tokens / max(summary.seconds, 1e-9):,.0f} tokens/s)"
    )
    if summary.skipped:
        skipped = ", ".join(f"{count:,} {reason}" for reason, count in summary.skipped.most_common())
        click.echo(f"skipped {sum(summary.skipped.values()):,} documents: {skipped}")


@data.command("inspect")
@click.option("--prefix", type=click.Path(), required=True, help="PREFIX of PREFIX.bin + .idx.")
@click.option(
    "--tokenizer",
    "tokenizer_spec",
    default=None,
    help="Decode the sample with this tokenizer ('byte' or a tokenizer.json) [default: 'byte' when every "
    "id in the sample is a byte or EOS, else show ids].",
)
@click.option("--document", type=click.IntRange(min=0), default=0, show_default=True, help="Which document to show.")
@click.option("--max_tokens", type=click.IntRange(min=1), default=200, show_default=True)
def inspect(prefix: str, tokenizer_spec: str | None, document: int, max_tokens: int) -> None:
    """Print a tokenized corpus's documents, tokens and dtype, and a decoded sample."""
    from llm_gym.data.inspection import describe_corpus

    for line in describe_corpus(prefix, tokenizer_spec, document, max_tokens):
        click.echo(line)
