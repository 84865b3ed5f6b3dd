"""Small file rules used everywhere: atomic writes, and whether a model spec names a local path.

    check_output_dir("runs/demo")                       # UsageError if it is (or lies under) a file
    make_output_dir("runs/demo")                        # create it, or say in one line why not
    write_text_atomic(run_dir / "metrics.json", text)   # readers never see half a file
    write_atomic(cache_path, lambda f: np.savez(f, **arrays))   # the same for binary files
    looks_like_path("./ckpt") -> True; looks_like_path("Qwen/Qwen2.5-Math-7B") -> False
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from sharpen.errors import UsageError


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through `write(binary_file)` so that a reader sees the old file or the new one, never half.

    A temp file beside `path`, fsynced, then os.replace; a failed write leaves the old file and no temp file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_atomic` for text (UTF-8).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_text_atomic(p, "one"); write_text_atomic(p, "two"); p.read_text()
    'two'
    """
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def looks_like_path(spec: str) -> bool:
    """True when `spec` names a local path rather than a Hub id (owner/name) or a built-in name.

    A spec that exists on disk is a path; so is one that starts with `.`, `/` or `~`, or has
    more than one `/` (a Hub id has exactly one).

    >>> looks_like_path("Qwen/Qwen2.5-Math-7B"), looks_like_path("runs/x/grpo"), looks_like_path("~/m")
    (False, True, True)
    """
    spec = str(spec)
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def resolve_local(spec: str) -> str:
    """An existing local path made absolute (so the same model has one name from any directory); else `spec`."""
    path = Path(str(spec)).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse, before any work, an output directory that is a file, lies under one, or cannot be written."""
    path = Path(path).expanduser()
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is a file" if existing == path else f"lies under {existing}, which is a file"
                raise UsageError(f"{what} '{path}' {where}: give a directory")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise UsageError(f"{what} '{path}' cannot be written here ({existing} is not writable)")
            break
    return path


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create a run directory (and parents), or say in one line why it cannot be written."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory '{path}': {err.strerror}") from None
    return path
