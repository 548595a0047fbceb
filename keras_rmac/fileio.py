"""File safety: atomic writes, content hashes and one exclusive lock.

Every writer in keras_rmac goes through this module, so that a file on disk
is always either its old complete version or its new complete version:

- `atomic_write(path)` yields a temporary path in the same folder; on a
  clean exit the file is flushed to disk (fsync), renamed over `path` and
  the folder itself is fsynced; on an error the temporary file is removed
  and `path` is left untouched.
- `atomic_write_bytes`, `atomic_write_text`, `atomic_write_json` and
  `atomic_save_npy` are the common cases of it.
- `file_sha256` hashes a file's contents.
- `FileLock` holds an exclusive, non-blocking `flock` that the kernel drops
  when the process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

try:  # POSIX only; elsewhere the lock is advisory-free (a no-op).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "FileLock",
    "LockedError",
    "atomic_save_npy",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "fsync_path",
    "fsync_tree",
]


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file or a folder entry to disk.

    Folders are synced best effort: some file systems refuse to open or
    fsync a directory, and then nothing more can be done.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """`fsync_path` on every file and folder under `root` (included).

    Folders are synced after what they hold, so a folder written into a
    temporary place and renamed into view is complete on disk first.
    """
    for folder, _, names in os.walk(os.fspath(root), topdown=False):
        for name in names:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path that replaces `path` on a clean exit.

    The temporary file lives in `path`'s folder (so the final rename is
    atomic), keeps `path`'s extension (so writers that look at it, such as
    `keras.Model.save`, still work) and is removed if the block raises.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_write(path) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> open(path).read()
    'done'
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    suffix = "".join(_suffixes(name))
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{name}.tmp-", suffix=suffix
    )
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _suffixes(name: str) -> list[str]:
    """`"m.weights.h5"` -> `[".weights", ".h5"]`; no suffix for dot-files."""
    parts = name.lstrip(".").split(".")[1:]
    return ["." + part for part in parts]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **kwargs) -> None:
    """Writes `obj` as JSON to `path` atomically (indent 1 by default)."""
    kwargs.setdefault("indent", 1)
    atomic_write_bytes(path, json.dumps(obj, **kwargs).encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """`np.save(path, array)`, atomically (see `atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def link_or_copy(source: str, target: str) -> None:
    """Hard-links `source` to `target` (files written once), else copies
    it atomically (another file system, or no hard links there)."""
    try:
        os.link(source, target)
    except OSError:
        with atomic_write(target) as tmp:
            shutil.copyfile(source, tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class LockedError(RuntimeError):
    """Another process holds the lock."""


class FileLock:
    """An exclusive, non-blocking `flock` on one file, as a context manager.

    The kernel drops the lock when the process dies, so a killed run never
    leaves a stale lock behind; a second process gets `LockedError` (or the
    `error` class given) at once instead of waiting.

    Args:
        path: str. The lock file (created if missing, never removed).
        message: str. The error message when the lock is held elsewhere.
        error: exception class raised then. Defaults to `LockedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        message: str | None = None,
        error: type[Exception] = LockedError,
    ):
        self.path = os.fspath(path)
        self.message = message or f"{self.path} is locked by another process."
        self.error = error
        self._file = None

    def __enter__(self) -> FileLock:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a")
        if fcntl is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.close()
                self._file = None
                raise self.error(self.message) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # Releases the lock.
            self._file = None
