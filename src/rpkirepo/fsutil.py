"""Crash-safe filesystem primitives: atomic replace, directory fsync, filesystem sync, locks.

Everything the toolkit makes visible to clients goes through here, so that a crash (kill -9, power
loss) at any instant leaves either the old or the new file, never a torn one:

* :func:`atomic_write` -- temporary file in the same directory, write, fsync, rename, fsync dir;
* :func:`replace_symlink` -- temporary symlink, rename over the old one, fsync dir;
* :func:`sync_filesystem` -- ``syncfs(2)`` on one filesystem (falls back to ``sync(2)``), used once
  per run instead of one fsync per file when thousands of files were written;
* :class:`DirLock` -- an exclusive ``flock`` so two runs never overlap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Final

from rpkirepo.errors import Reason, StorageError

__all__ = [
    "DirLock",
    "atomic_write",
    "fsync_dir",
    "remove_tree",
    "replace_symlink",
    "sync_filesystem",
    "write_all",
]

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _libc = None

TMP_PREFIX: Final = ".tmp-"


def _storage(exc: OSError, what: str, path: Path | str) -> StorageError:
    return StorageError(Reason.STORAGE_IO, f"{what}: {exc.strerror or exc}", path=str(path))


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    written = os.write(fd, data)
    if written != len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _storage(exc, "cannot open directory", path) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _storage(exc, "cannot fsync directory", path) from exc
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (``syncfs(2)``)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is not None and hasattr(_libc, "syncfs"):
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise StorageError(Reason.STORAGE_IO, f"syncfs: {os.strerror(err)}", path=str(path))
        else:  # pragma: no cover - non-Linux
            os.sync()
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, mtime: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            write_all(fd, data)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _storage(exc, "cannot write file", path) from exc
    fsync_dir(path.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a client sees the old or the new target)."""
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}.{secrets.token_hex(4)}")
    try:
        os.symlink(target, tmp)
        os.rename(tmp, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _storage(exc, "cannot replace symlink", link) from exc
    fsync_dir(link.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree without following symlinks; missing is fine."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        path.unlink(missing_ok=True)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


class DirLock:
    """An exclusive, non-blocking ``flock`` on ``<dir>/lock``; released on exit or process death."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "lock"
        self._fd: int | None = None

    def __enter__(self) -> DirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise _storage(exc, "cannot open lock file", self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(
                    Reason.STATE_LOCKED, "another run holds the lock", path=str(self.path)
                ) from exc
            raise _storage(exc, "cannot lock", self.path) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
