"""`lmrs corpus add`: a thin layer over lmrs.corpus.add_to_corpus."""

from __future__ import annotations

import click

from lmrs.corpus.files import add_to_corpus


@click.group()
def corpus() -> None:
    """Build a training corpus folder from source trees."""


@corpus.command("add")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("corpus_dir", type=click.Path(path_type=str))
@click.option(
    "--ext", "extensions", multiple=True, help="File extension to include (repeatable), e.g. .py"
)
@click.option(
    "--text-field",
    default="text",
    show_default=True,
    help="Field/column holding the text when SRC is a .jsonl, .json, .parquet, .csv file "
    "or a datasets folder.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def add(
    src: str, corpus_dir: str, extensions: tuple[str, ...], text_field: str, quiet: bool
) -> None:
    """Copy the text files of SRC into CORPUS_DIR, keeping relative paths (a record file
    or datasets folder: one text file per record, in record order)."""
    result = add_to_corpus(
        src, corpus_dir, list(extensions), text_field=text_field, show_progress=not quiet
    )
    for path, reason in result.unreadable:
        click.echo(f"lmrs: skipped {path}: {reason}", err=True)
    if result.bad_records is not None and result.bad_records.total:
        click.echo(f"lmrs: {result.bad_records.summary()}", err=True)
    click.echo(result.summary(corpus_dir))


def register_corpus_commands(group: click.Group) -> None:
    group.add_command(corpus)
