"""``llm_gym data ...``: get a corpus, train a tokenizer, tokenize into ``.bin/.idx``, merge, inspect the result."""

import json
import signal
import threading
from pathlib import Path

import click

from llm_gym.cli.group import CommandGroup


class SeveralValuesCommand(click.Command):
    """Takes ``--input a b c`` as ``--input a --input b --input c``, so a shell glob may follow the option."""

    several_values_options = ("--input", "--prefix")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        option = None
        for arg in args:
            if arg.startswith("-"):
                name = arg.split("=", 1)[0]
                option = name if name in self.several_values_options else None
            elif option is not None and expanded[-1] != option:
                expanded.append(option)
            expanded.append(arg)
        return super().parse_args(ctx, expanded)


input_option = click.option(
    "--input",
    "inputs",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="A file (.jsonl/.json, .jsonl.gz/.json.gz, .jsonl.zst/.json.zst, .parquet, .arrow, .txt) or a directory "
    "(searched recursively, sorted; a Hugging Face save_to_disk directory reads as its dataset); several may follow "
    "the option, or repeat it. Read in the order given.",
)
pattern_option = click.option(
    "--pattern",
    default=None,
    help="Take only the files of directory inputs whose path below the directory matches this glob "
    "('*' matches across '/'), e.g. 'data/CC-MAIN-2024-10/*.parquet'.",
)
text_key_option = click.option(
    "--text_key", default="text", show_default=True, help="The JSON key or parquet/Arrow column of the text."
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


@data.command("train_tokenizer", cls=SeveralValuesCommand)
@input_option
@pattern_option
@click.option("--vocab_size", type=click.IntRange(min=1), required=True, help="Tokens in the vocabulary.")
@click.option("--output_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@text_key_option
@force_option
def train_tokenizer(
    inputs: tuple[Path, ...], pattern: str | None, vocab_size: int, output_path: Path, text_key: str, force: bool
) -> None:
    """Train a byte-level BPE tokenizer (with <|endoftext|>) and save it as a tokenizer.json."""
    from llm_gym.data.tokenizer_training import train_bpe_tokenizer

    reached = train_bpe_tokenizer(inputs, vocab_size, output_path, text_key, force, pattern)
    note = "" if reached == vocab_size else f" (of {vocab_size:,} asked: the input allows no more merges)"
    click.echo(f"{output_path}: byte-level BPE, {reached:,} tokens{note}")


@data.command("tokenize", cls=SeveralValuesCommand)
@input_option
@pattern_option
@click.option("--tokenizer", "tokenizer_spec", required=True, help="'byte', or the path of a tokenizer.json.")
@click.option(
    "--output_prefix",
    type=click.Path(),  # kept as written: a trailing slash (a directory, refused) must reach the check
    required=True,
    help="Writes PREFIX.bin + .idx (with --num_shards: PREFIX-IIIII-of-NNNNN.bin + .idx).",
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
    help="On a bad document (malformed JSON, missing key or column, not a string, invalid UTF-8, empty): stop, or "
    "skip and count it.",
)
@click.option(
    "--num_shards",
    type=click.IntRange(min=1),
    default=None,
    help="Split the inputs into this many shards (by file, row group or byte range) and tokenize only one.",
)
@click.option(
    "--shard_index",
    type=int,
    default=None,
    help="Which shard to tokenize, 0 to --num_shards - 1 (e.g. $SLURM_ARRAY_TASK_ID).",
)
@force_option
def tokenize(
    inputs: tuple[Path, ...],
    pattern: str | None,
    tokenizer_spec: str,
    output_prefix: str,
    text_key: str,
    num_workers: int | None,
    on_error: str,
    num_shards: int | None,
    shard_index: int | None,
    force: bool,
) -> None:
    """Tokenize documents into PREFIX.bin/.idx (Megatron-LM indexed format), EOS after each document.

    Ends with a JSON line of the counts, which the logs of a job's shards add up from.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from llm_gym.data.tokenization import tokenize_files
    from llm_gym.errors import UserError

    if (num_shards is None) != (shard_index is None):
        raise UserError("--num_shards and --shard_index go together: give both or neither")
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
        task = progress.add_task("tokenizing", total=None, documents=0, tokens=0, rate=0.0)

        def report(update) -> None:
            counts["documents"] += update.documents
            counts["tokens"] += update.tokens
            progress.update(task, total=update.total_input_bytes, advance=update.input_bytes, **counts)
            elapsed = progress.tasks[task].elapsed or 0.0
            progress.update(task, rate=progress.tasks[task].completed / 1e6 / max(elapsed, 1e-9))

        summary = tokenize_files(
            inputs,
            tokenizer_spec,
            output_prefix,
            text_key,
            num_workers,
            on_error,
            force,
            on_progress=report,
            pattern=pattern,
            num_shards=num_shards,
            shard_index=shard_index or 0,
        )
    click.echo(
        f"{summary.output_prefix}.bin/.idx: {summary.documents:,} documents, {summary.tokens:,} tokens "
        f"({summary.dtype}), {summary.input_bytes / 1e6:.1f} MB in {summary.seconds:.1f} s "
        f"({summary.megabytes_per_s:.1f} MB/s, {summary.tokens / max(summary.seconds, 1e-9):,.0f} tokens/s)"
    )
    if summary.skipped:
        skipped = ", ".join(f"{count:,} {reason}" for reason, count in summary.skipped.most_common())
        click.echo(f"skipped {sum(summary.skipped.values()):,} documents: {skipped}")
    click.echo(json.dumps(summary.as_record()))


@data.command("merge", cls=SeveralValuesCommand)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    help="A PREFIX of PREFIX.bin + .idx, or a quoted glob of prefixes ('data/tok/train-*-of-00064'); several may "
    "follow the option. Concatenated in the order given, each glob's matches sorted.",
)
@click.option("--output_prefix", type=click.Path(), required=True, help="Writes PREFIX.bin + .idx.")
@force_option
def merge(inputs: tuple[str, ...], output_prefix: str, force: bool) -> None:
    """Concatenate tokenized corpora (the shards of a tokenize job) into one PREFIX.bin/.idx, streaming."""
    from llm_gym.data.indexed import merge_corpora
    from llm_gym.data.prefixes import resolve_prefixes

    summary = merge_corpora(resolve_prefixes(inputs), output_prefix, force)
    click.echo(
        f"{output_prefix}.bin/.idx: {summary.corpora:,} corpora merged, {summary.documents:,} documents, "
        f"{summary.tokens:,} tokens ({summary.dtype}) in {summary.seconds:.1f} s"
    )


@data.command("inspect", cls=SeveralValuesCommand)
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    required=True,
    help="PREFIX of PREFIX.bin + .idx, or a quoted glob of prefixes; several are described as one corpus.",
)
@click.option(
    "--tokenizer",
    "tokenizer_spec",
    default=None,
    help="Decode the sample with this tokenizer ('byte' or a tokenizer.json) [default: 'byte' when every "
    "id in the sample is a byte or EOS, else show ids].",
)
@click.option("--document", type=click.IntRange(min=0), default=0, show_default=True, help="Which document to show.")
@click.option("--max_tokens", type=click.IntRange(min=1), default=200, show_default=True)
def inspect(prefixes: tuple[str, ...], tokenizer_spec: str | None, document: int, max_tokens: int) -> None:
    """Print a tokenized corpus's documents, tokens, dtype and length histogram, and a decoded sample."""
    from llm_gym.data.inspection import describe_corpus
    from llm_gym.data.prefixes import resolve_prefixes

    for line in describe_corpus(resolve_prefixes(prefixes), tokenizer_spec, document, max_tokens):
        click.echo(line)
