"""Atomic file writes: a temporary file beside the target, then a rename into place.

A reader (or a crash) never sees a half-written file: either the old content or the new.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional


def write_atomic(path: Path, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically; ``mode`` sets permissions (mkstemp gives 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
