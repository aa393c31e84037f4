"""The `lmrs` command: a click group; each command is a thin layer over the Python API.

Errors are handled here, once, for every command: an lmrs error (``LmrsError``, the Rust
``TokenizerError``), a ``ValueError`` from an argument check, or an ``OSError`` becomes one
line, ``lmrs: FILE: problem``, and exit status 1; ``--debug`` (or ``LMRS_DEBUG=1``) shows the
traceback instead. Any other exception is a bug in lmrs and keeps its traceback. A warning
about the input (``lmrs.errors.InputWarning``) is one line too, ``lmrs: warning: ...``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any, Optional, TextIO

import click

from lmrs.cli.checkpoint import register_checkpoint_commands
from lmrs.cli.corpus import register_corpus_commands
from lmrs.cli.export import register_export_commands
from lmrs.cli.model import register_model_commands
from lmrs.cli.tokenizer import register_tokenizer_commands
from lmrs.errors import InputWarning, LmrsError, one_line
from lmrs.tokenizer.core import TokenizerError

# What the user can fix: each becomes one line. Everything else is a bug: a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (LmrsError, TokenizerError, ValueError, OSError)


class LmrsCliError(click.ClickException):
    """A one-line error, printed as ``lmrs: message``."""

    def show(self, file: Optional[Any] = None) -> None:
        click.echo(f"lmrs: {self.format_message()}", err=True)


# The temporary name of an atomic write (lmrs.atomic, rust/src/atomic.rs, an export folder):
# ``DIR/.NAME.tmp-PID-XXXX``; an error names the target, ``DIR/NAME``, the file the user gave.
TEMPORARY_NAME = re.compile(r"(?P<dir>[^\s'\"]*/)?\.(?P<name>[^/\s'\"]+?)\.tmp-\d+-[\w-]+")


def target_names(text: str) -> str:
    """``text`` with every atomic writer's temporary name replaced by its target's."""
    return TEMPORARY_NAME.sub(r"\g<dir>\g<name>", text)


def describe(error: BaseException) -> str:
    """The one line for an error: OS errors as 'FILE: problem', others as their message;
    a temporary file is named by the target it stands for."""
    if isinstance(error, OSError) and (error.strerror or error.filename):
        name = target_names(str(error.filename)) if error.filename is not None else ""
        reason = (error.strerror or str(error)).rstrip(".")
        if error.errno == errno.ENOSPC:
            return f"no space left on device writing {name}" if name else reason
        return f"{name}: {reason[:1].lower()}{reason[1:]}" if name else reason
    return target_names(one_line(error))


# What to make smaller when a command runs out of memory, by command.
MEMORY_HINTS = {
    "train": "--batch-size (--grad-accum keeps the batch), --seq-len or --size",
    "eval": "--batch-size or --seq-len",
    "sample": "--max-length, or use a device with more memory",
    "quickstart": "--vocab-size or the corpus",
}


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: MemoryError (Python, numpy) or torch's
    RuntimeError (torch.OutOfMemoryError on a GPU, the CPU allocator's 'can't allocate')."""
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return "out of memory" in text or "can't allocate memory" in text


def describe_out_of_memory(error: BaseException, command: Optional[str]) -> str:
    """One line for running out of memory: what ran out and what to reduce."""
    hint = MEMORY_HINTS.get(command or "", "the input, or use a machine with more memory")
    what = "GPU memory" if "CUDA" in str(error) or "MPS" in str(error) else "memory"
    return f"out of {what}: reduce {hint}"


def debug_enabled() -> bool:
    return os.environ.get("LMRS_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Shows each :class:`InputWarning` as one line on stderr, every time it is issued."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        show = warnings.showwarning

        def show_one_line(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Optional[TextIO] = None,
            line: Optional[str] = None,
        ) -> None:
            if issubclass(category, InputWarning):
                click.echo(f"lmrs: warning: {message}", err=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_one_line
        yield


class LmrsUsageError(click.UsageError):
    """A bad option or argument, printed as one line with a pointer to the help."""

    def show(self, file: Optional[Any] = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"lmrs: {self.format_message()}{hint}", err=True)


class LmrsGroup(click.Group):
    """A click group whose commands' user errors become one line (see the module doc)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with one_line_warnings():
                return super().invoke(ctx)
        except click.UsageError as e:
            if debug_enabled() or isinstance(e, LmrsUsageError):
                raise
            raise LmrsUsageError(e.format_message(), e.ctx) from e
        except click.ClickException as e:
            if debug_enabled() or type(e) is not click.ClickException:
                raise
            raise LmrsCliError(e.format_message()) from e
        except USER_ERRORS as e:
            if debug_enabled():
                raise
            raise LmrsCliError(describe(e)) from e
        except (MemoryError, RuntimeError) as e:
            if debug_enabled() or not out_of_memory(e):
                raise
            raise LmrsCliError(describe_out_of_memory(e, ctx.invoked_subcommand)) from e
        except KeyboardInterrupt as e:
            if debug_enabled():
                raise
            interrupted = LmrsCliError("interrupted")
            interrupted.exit_code = 130
            raise interrupted from e


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        # read by debug_enabled() in this process and by torchrun's worker processes
        os.environ["LMRS_DEBUG"] = "1"


@click.group(cls=LmrsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmrs")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show tracebacks instead of one-line errors (also LMRS_DEBUG=1).",
)
def cli() -> None:
    """Train small GPT-style language models: corpus → vocab → train → sample."""


register_corpus_commands(cli)
register_tokenizer_commands(cli)
register_model_commands(cli)
register_export_commands(cli)
register_checkpoint_commands(cli)


def main() -> None:
    cli.main(prog_name="lmrs")


if __name__ == "__main__":
    main()
