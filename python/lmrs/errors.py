"""The error types lmrs raises for bad input, and the one place that knows them all.

Every expected failure (a missing or corrupt file, an argument that contradicts a
checkpoint, a diverged run) is an :class:`LmrsError` subclass or an ``OSError`` whose
message names the file; the CLI turns each into one line, ``lmrs: FILE: problem``
(``cli.py``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LmrsError(Exception):
    """Base of lmrs's own errors; the message is one line that names the file at fault."""


class InputError(LmrsError, ValueError):
    """An argument or an input file that lmrs cannot use (a ValueError for old callers)."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message (messages from torch and pickle run long)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
