"""`lmrs export`: a thin layer over lmrs.export (lmrs.interop.export)."""

from __future__ import annotations

from typing import Optional

import click

from lmrs.interop.export import DTYPES, FORMATS


@click.command("export")
@click.argument("run", type=click.Path(path_type=str))
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="hf",
    show_default=True,
    help="hf: a transformers folder (AutoModelForCausalLM / AutoTokenizer); "
    "gguf: one file for llama.cpp and Ollama.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Folder (hf) or .gguf file to write.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="Weight type: f32 (default), f16, bf16; q8_0 for gguf only.",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(path_type=str),
    default=None,
    help="tokenizer.json to export instead of the run's own.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace -o even if lmrs did not write it (a folder: everything in it).",
)
def export_command(
    run: str,
    format_: str,
    output: str,
    dtype: Optional[str],
    tokenizer_path: Optional[str],
    overwrite: bool,
) -> None:
    """Export a trained RUN (a run or checkpoint folder) for transformers or llama.cpp.

    The output is written beside -o and renamed into place whole; an existing -o is
    replaced only when it is an earlier lmrs export (or with --overwrite)."""
    from lmrs.interop.export import export
    from lmrs.tokenizer.core import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path) if tokenizer_path else None
    path = export(
        run, output, format_, dtype=dtype or "f32", tokenizer=tokenizer, overwrite=overwrite
    )
    click.echo(f"wrote {path} ({format_}, {dtype or 'f32'})")


def register_export_commands(group: click.Group) -> None:
    group.add_command(export_command)
