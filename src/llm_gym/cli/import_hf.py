"""``llm_gym import_hf``: a Hugging Face transformers model directory as a model section and llm_gym weights."""

from pathlib import Path

import click


@click.command()
@click.option(
    "--model_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="A transformers GPT2LMHeadModel or LlamaForCausalLM directory: config.json and safetensors weights.",
)
@click.option("--output_dir", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
def import_hf(model_dir: Path, output_dir: Path, force: bool) -> None:
    """Import a Hugging Face GPT-2 or Llama model: a model section YAML and weights to warm-start from."""
    from llm_gym.inference.hf_import import MODEL_SECTION_FILE, TOKENIZER_FILE, import_from_hf

    result = import_from_hf(model_dir, output_dir, force)
    click.echo(f"wrote {result.output_dir}: {result.architecture}, {result.parameters:,} parameters")
    click.echo(f"  model section: {result.output_dir / MODEL_SECTION_FILE} (compose it with defaults:)")
    click.echo(f"  weights: checkpointing.warm_start_from={result.output_dir}")
    if result.tokenizer_copied:
        click.echo(f"  tokenizer: data.tokenizer={result.output_dir / TOKENIZER_FILE}")
    else:
        click.echo("  no tokenizer.json in the model directory: tokenize with the model's own tokenizer")
