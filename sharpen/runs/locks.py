"""One writer per run directory: every command that writes one holds an exclusive lock on it.

    with hold_run_dir(run_dir, "sample"):     # UsageError naming the holder if another process writes it
        ...                                   # nested holds of the same directory (a study's stages) are free

The lock is `fcntl.flock` on RUN_DIR/.sharpen.lock, which also marks the directory as made by
sharpen (`--overwrite` deletes only directories that carry it or a study.json). The kernel
drops the lock when its holder dies, so a killed run never leaves a stale lock; the file
itself stays (deleting it would let two processes lock two different files).

A directory inside a locked one (a study's grpo/ stage) counts as locked by the outer
holder. Processes of one `accelerate launch` share the lock through the main process: the
other ranks never take it, and children the holder starts (an accelerate relaunch of
`sharpen grpo`) inherit it through the SHARPEN_HELD_LOCKS environment variable.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sharpen.errors import UsageError
from .files import make_output_dir
from .processes import is_main_process

LOCK_FILE = ".sharpen.lock"
HELD_ENV = "SHARPEN_HELD_LOCKS"

_held: dict[Path, int] = {}  # directory -> the lock file's descriptor, in this process


def _inherited() -> set[Path]:
    return {Path(p) for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p}


def _covered(path: Path) -> bool:
    """Whether this process (or the parent that started it) already holds `path` or a directory above it."""
    mine = set(_held) | _inherited()
    return any(p in mine for p in (path, *path.parents))


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        info = {}
    if not info:
        return "another process"
    return (f"process {info.get('pid')} on {info.get('host')}, `sharpen {info.get('command')}` "
            f"since {info.get('started_utc')}")


def _busy(path: Path, fd: int) -> UsageError:
    return UsageError(f"{path} is being written by {_holder(fd)}: wait for it to finish, or use another "
                      f"output directory (one writer per run directory)")


def _check_outer_locks(path: Path) -> None:
    """Refuse when a directory above `path` is held by another process (e.g. a study writing its grpo/ stage)."""
    for parent in path.parents:
        lock = parent / LOCK_FILE
        if not lock.is_file():
            continue
        fd = os.open(lock, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(parent, fd) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike, command: str):
    """Hold RUN_DIR's lock for the body (creating the directory); UsageError if another process holds it."""
    path = Path(run_dir).expanduser().resolve()
    if not is_main_process() or _covered(path):
        yield path
        return
    _check_outer_locks(path)
    created = not path.exists()
    make_output_dir(path)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _busy(path, fd)
        os.close(fd)
        raise error from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                             "argv": sys.argv[1:],
                             "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
    _held[path] = fd
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join(filter(None, [previous, str(path)]))
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        del _held[path]
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        if failed and created and holds_only_lock(path):
            # A command refused before it wrote anything leaves no directory behind.
            (path / LOCK_FILE).unlink(missing_ok=True)
            path.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_sharpen_dir(path: str | os.PathLike) -> bool:
    """Whether a directory was written by sharpen (its lock file, or a study.json of older versions)."""
    path = Path(path)
    return (path / LOCK_FILE).is_file() or (path / "study.json").is_file()


def clear_run_dir(path: str | os.PathLike) -> None:
    """Delete everything in a sharpen run directory except its lock file (held by the caller)."""
    import shutil

    path = Path(path)
    if not is_sharpen_dir(path):
        raise UsageError(f"{path} holds files that sharpen did not write (no {LOCK_FILE} or study.json): "
                         f"--overwrite deletes only sharpen's run directories; delete it yourself or use another "
                         f"output directory")
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def holds_only_lock(path: str | os.PathLike) -> bool:
    """An existing directory whose only entry is the lock file (or nothing): no run's files yet."""
    return all(child.name == LOCK_FILE for child in Path(path).iterdir())
