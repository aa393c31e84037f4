"""Reading the small JSON files lmrs writes (sidecars, manifests, checkpoint metadata)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


class JSONNestingError(ValueError):
    """JSON nested deeper than Python's recursion allows (``json`` raises RecursionError)."""


def parse_json(data: str | bytes | bytearray) -> Any:
    """``json.loads`` whose every failure on bad input is a ``ValueError``: JSON syntax
    (``json.JSONDecodeError``), bad UTF-8 (``UnicodeDecodeError``), an integer of more
    digits than Python converts, and nesting too deep to parse (:class:`JSONNestingError`
    instead of the ``RecursionError`` that ``json`` raises: one line of a hundred thousand
    ``[`` must not be a traceback). A UTF-8 byte-order mark before bytes is accepted."""
    try:
        return json.loads(data)
    except RecursionError:
        raise JSONNestingError("JSON nested too deeply") from None


def load_json(f: IO[bytes] | IO[str]) -> Any:
    """:func:`parse_json` of a whole open file."""
    return parse_json(f.read())


def read_json_object(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` with a one-line message naming the file if it is
    missing, unreadable, not JSON, or not an object. ``what`` names the file's role."""
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        # ValueError: not JSON (JSONDecodeError), bad UTF-8 (UnicodeDecodeError), or an
        # integer of more digits than Python converts; RecursionError: nesting too deep.
        raise error(f"{path}: cannot read {what}: {e}") from e
    if not isinstance(value, dict):
        raise error(f"{path}: {what} is not a JSON object")
    return value


def is_plain_name(name: object) -> bool:
    """A file name inside its directory: no separator, not ``.``/``..``, not absolute, and
    printable (so that an error can name it on one line). Files that name other files
    (manifests, checksums) must not lead a reader anywhere else."""
    return (
        isinstance(name, str)
        and name.isprintable()
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and not os.path.isabs(name)
        and Path(name).name == name
    )
