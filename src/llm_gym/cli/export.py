"""``llm_gym export_hf``: a checkpoint as a Hugging Face transformers model directory."""

from pathlib import Path

import click

from llm_gym.cli.options import checkpoint_path_option, user_modules_option


@click.command()
@checkpoint_path_option
@click.option("--output_dir", type=click.Path(path_type=Path), required=True, help="Directory to write the model into.")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@user_modules_option
def export_hf(checkpoint_path: Path, output_dir: Path, force: bool, user_modules: tuple[str, ...]) -> None:
    """Export a checkpoint as a Hugging Face transformers model directory (GPT-2 or Llama)."""
    from llm_gym.inference.hf_export import export_to_hf

    export = export_to_hf(checkpoint_path, output_dir, force, user_modules)
    click.echo(f"wrote {export.output_dir}: {export.architecture} from {export.checkpoint_dir}")
    if not export.tokenizer_saved:
        click.echo(
            "no tokenizer files: the run used the byte tokenizer, which transformers has no class for "
            "(ids 0-255 are UTF-8 bytes, 256 ends a text)"
        )
