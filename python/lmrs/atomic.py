"""The one atomic-write policy of lmrs (the Rust writers follow it too, ``rust/src/atomic.rs``).

1. write into a temporary name in the target's own directory (``.NAME.XXXX.tmp``),
2. fsync the file, 3. rename it over the target, 4. fsync the directory.

A reader, or a crash at any point, sees the old content or the new, never a mix; after
step 4 the new content survives a power cut. Files get the permissions of any normal
output (``0o666 & ~umask``), not mkstemp's 0600. Once the new file is in place the writer
removes its own temporaries left by earlier crashes (other targets' are not touched).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from lmrs.faults import fault_point


def default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories can't sync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not fsync directories
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def remove_stale(path: Path, prefix: str, keep: Optional[Path] = None) -> int:
    """Remove ``path``'s siblings whose names start with ``prefix`` (leftovers of crashed
    writes of the same target), except ``keep``; returns how many were removed."""
    removed = 0
    for stale in path.parent.glob(f"{glob_escape(prefix)}*"):
        if keep is not None and stale == keep:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            try:
                stale.unlink()
            except OSError:
                continue
        removed += 1
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def write_atomic(path: Path, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` by the policy above; ``mode`` defaults to 0o666 & ~umask."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        fault_point("atomic.tmp_written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fault_point("atomic.renamed")
    fsync_dir(path.parent)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
