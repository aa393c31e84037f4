"""The one atomic-write policy of lmrs (the Rust writers follow it too, ``rust/src/atomic.rs``).

1. write into a temporary name in the target's own directory (``.NAME.tmp-PID-XXXXXXXX``,
   the same form as the Rust writers' so that each cleans up after the other),
2. fsync the file, 3. rename it over the target, 4. fsync the directory.

A reader, or a crash at any point, sees the old content or the new, never a mix; after
step 4 the new content survives a power cut. Files get the permissions of any normal
output (``0o666 & ~umask``), not mkstemp's 0600. Once the new file is in place the writer
removes this target's temporaries whose process is gone (a crashed earlier write); a
concurrent writer's, and other targets', are not touched.
"""

from __future__ import annotations

import glob
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


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host (this process is never gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False


def remove_dead_temporaries(path: Path) -> int:
    """Remove ``.NAME.tmp-PID-*`` files beside ``path`` whose writing process is gone."""
    removed = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid_text = stale.name[len(path.name) + 6 :].split("-", 1)[0]
        if not pid_text.isdigit() or not process_gone(int(pid_text)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed += 1
    return removed


def write_atomic(path: Path, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` by the policy above; ``mode`` defaults to 0o666 & ~umask."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
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
    remove_dead_temporaries(path)
