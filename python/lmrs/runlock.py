"""The one owner of a run directory: an advisory lock held by every command that writes there.

``lmrs train`` holds it for the whole run, ``lmrs checkpoint consolidate`` while it rewrites a
checkpoint, ``lmrs quickstart`` for its run. Readers (``sample``, ``eval``, ``export``,
``plot``) take no lock: every writer replaces files atomically, so a reader sees whole ones.

The lock is ``flock`` on ``RUN/.lmrs.lock``: the kernel drops it when its process dies, so a
killed run never leaves a stale lock. The file holds the holder's PID, host and command, for
the refusal to name. It is never deleted while a run could race for it (deleting a lock
file lets two processes lock two different files), except when the holder made the run
directory itself and leaves it empty (a run refused before writing anything).

A distributed job holds the lock once: in rank 0 only, and not again in processes started by
a holder (``lmrs train --nproc`` relaunches itself under torchrun): the holder lists its
directories in ``LMRS_RUN_LOCKS``, which its child processes inherit. The same variable lets
a holder's own code re-enter the lock (``lmrs train`` around :func:`lmrs.train`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from lmrs.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lmrs.lock"
HELD_ENV = "LMRS_RUN_LOCKS"


class RunInUseError(InputError):
    """Another live process holds the run directory's lock."""


def _key(directory: Path) -> str:
    return os.path.realpath(directory)


def _held() -> list[str]:
    return [key for key in os.environ.get(HELD_ENV, "").split(os.pathsep) if key]


def _primary_rank() -> bool:
    """Not a secondary rank of a torchrun job (rank 0 holds the job's lock)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or (
        int(os.environ.get("RANK", "0") or 0) == 0
    )


def _holder_text(fd: int) -> str:
    """'lmrs train (PID 123 on host h, since 2026-12-07 10:00:00)' from the lock file."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw else {}
    except (OSError, ValueError, RecursionError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return (
        f"{info.get('command', 'lmrs')} (PID {info.get('pid')} on host {info.get('host', '?')}, "
        f"since {info.get('since', '?')})"
    )


def _topmost_missing(directory: Path) -> Optional[Path]:
    """The first of ``directory`` and its parents that does not exist yet (None: it exists)."""
    missing = None
    path = directory.absolute()
    while not path.exists():
        missing = path
        path = path.parent
    return missing


def _remove_if_unused(directory: Path, top: Path) -> None:
    """Remove ``directory`` (and parents up to ``top``) when they hold nothing but the lock."""
    with contextlib.suppress(OSError):
        if {entry.name for entry in directory.iterdir()} == {LOCK_FILE}:
            (directory / LOCK_FILE).unlink()
        path = directory.absolute()
        while True:
            path.rmdir()  # OSError when not empty: the run wrote something, keep it
            if path == top:
                break
            path = path.parent


@contextlib.contextmanager
def run_lock(
    directory: Union[str, os.PathLike[str]], command: str, *, primary: Optional[bool] = None
) -> Iterator[None]:
    """Hold ``directory``'s lock (creating the directory) for the ``with`` block.

    Raises :class:`RunInUseError` naming the holder when another process has it.
    ``primary``: whether this process takes the lock for its job (default: from torchrun's
    ``RANK``); secondary ranks and processes under a holder pass straight through.
    """
    directory = Path(directory)
    key = _key(directory)
    if fcntl is None or key in _held() or not (_primary_rank() if primary is None else primary):
        yield
        return
    top = _topmost_missing(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # a filesystem without locks (some network mounts): run, but say so
            os.close(fd)
            print(f"lmrs: {directory}: cannot lock ({e.strerror}); not locked", file=sys.stderr)
            yield
            return
        holder = _holder_text(fd)
        os.close(fd)
        raise RunInUseError(
            f"{directory}: in use by {holder}; wait for it to finish or use another directory"
        ) from None
    previous = os.environ.get(HELD_ENV)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        os.environ[HELD_ENV] = os.pathsep.join([*_held(), key])
        yield
    finally:
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if top is not None:
            _remove_if_unused(directory, top)
        os.close(fd)


__all__ = ["HELD_ENV", "LOCK_FILE", "RunInUseError", "run_lock"]
