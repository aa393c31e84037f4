"""Progress bars that suit both a terminal and a log file.

On a terminal, a normal tqdm bar. When stderr is not a terminal (a SLURM or CI log,
``lmrs train ... 2> train.log``), carriage-return redraws would pile up as hundreds of
kilobytes of one "line"; there the bar prints one plain line every ``LOG_INTERVAL_S``
seconds (and one at the end) instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm as _tqdm

# seconds between progress lines in a log; LMRS_LOG_INTERVAL overrides (tests, short jobs)
LOG_INTERVAL_S = 30.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _log_interval() -> float:
    raw = os.environ.get("LMRS_LOG_INTERVAL", "")
    try:
        value = float(raw)
    except ValueError:
        return LOG_INTERVAL_S
    return value if value >= 0 else LOG_INTERVAL_S


class _Lines:
    """A text stream for tqdm that turns each redraw into one newline-ended line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        # tqdm redraws as "\r" + status (+ "\n" when closing); keep only the status text
        for part in text.replace("\n", "\r").split("\r"):
            line = part.rstrip()
            if line:
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.tqdm
    """tqdm, or plain timed lines when writing to something that is not a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        if not _is_terminal(stream):
            kwargs["file"] = _Lines(stream)
            kwargs["mininterval"] = _log_interval()
            kwargs["maxinterval"] = max(kwargs["mininterval"], 10.0)
            kwargs["miniters"] = 1
            kwargs["dynamic_ncols"] = False
            kwargs["ncols"] = 100
            kwargs["ascii"] = True
        super().__init__(*args, **kwargs)
