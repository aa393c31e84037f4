"""The error types lmrs raises for bad input, and the one place that knows them all.

Every expected failure (a missing or corrupt file, an argument that contradicts a
checkpoint, a diverged run) is an :class:`LmrsError` subclass or an ``OSError`` whose
message names the file; the CLI turns each into one line, ``lmrs: FILE: problem``
(``cli.py``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import warnings


class LmrsError(Exception):
    """Base of lmrs's own errors; the message is one line that names the file at fault."""


class InputError(LmrsError, ValueError):
    """An argument or an input file that lmrs cannot use (a ValueError for old callers)."""


class InputWarning(UserWarning):
    """Input that lmrs uses but that is probably not what was meant (record files in a
    folder of text files, a file that changed while it was read); the CLI prints each as
    one line, ``lmrs: warning: ...``."""


def warn(message: str) -> None:
    """Issues an :class:`InputWarning` (``message`` names the file, like an error's)."""
    warnings.warn(message, InputWarning, stacklevel=3)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (messages from torch and pickle run long)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
