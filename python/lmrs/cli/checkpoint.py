"""`lmrs checkpoint consolidate`: the single-file weights of a sharded checkpoint."""

from __future__ import annotations

import click


@click.group("checkpoint")
def checkpoint_group() -> None:
    """Work on a run's checkpoints."""


@checkpoint_group.command("consolidate")
@click.argument("run", type=click.Path())
def consolidate_command(run: str) -> None:
    """Write model.safetensors into RUN's sharded checkpoint (RUN: a run or checkpoint
    directory), so that lmrs sample, eval and export can read it."""
    from lmrs.checkpoint.sharded import consolidate

    path = consolidate(run)
    click.echo(f"{path / 'model.safetensors'}")


def register_checkpoint_commands(group: click.Group) -> None:
    """Add this module's commands to the `lmrs` group."""
    group.add_command(checkpoint_group)
