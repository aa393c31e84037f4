"""`lmrs corpus add`: a thin layer over lmrs.corpus.add_to_corpus."""

from __future__ import annotations

import click

from lmrs.corpus import add_to_corpus


@click.group()
def corpus() -> None:
    """Build a training corpus folder from source trees."""


@corpus.command("add")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("corpus_dir", type=click.Path(path_type=str))
@click.option(
    "--ext", "extensions", multiple=True, help="File extension to include (repeatable), e.g. .py"
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def add(src: str, corpus_dir: str, extensions: tuple[str, ...], quiet: bool) -> None:
    """Copy the text files of SRC into CORPUS_DIR, keeping relative paths."""
    result = add_to_corpus(src, corpus_dir, list(extensions), show_progress=not quiet)
    for path, reason in result.unreadable:
        click.echo(f"lmrs: skipped {path}: {reason}", err=True)
    click.echo(result.summary(corpus_dir))


def register_corpus_commands(group: click.Group) -> None:
    group.add_command(corpus)
