"""CLI commands (placeholder until implemented)."""

from __future__ import annotations

import click


def register_tokenizer_commands(group: click.Group) -> None:
    """Add this module's commands to the `lmrs` group."""
