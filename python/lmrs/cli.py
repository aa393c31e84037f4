"""The `lmrs` command: a click group; each command is a thin layer over the Python API."""

from __future__ import annotations

import click

from lmrs.cli_corpus import register_corpus_commands
from lmrs.cli_model import register_model_commands
from lmrs.cli_tokenizer import register_tokenizer_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmrs")
def cli() -> None:
    """Train small GPT-style language models: corpus → vocab → train → sample."""


register_corpus_commands(cli)
register_tokenizer_commands(cli)
register_model_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
