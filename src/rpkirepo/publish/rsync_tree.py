"""The rsync view: revision trees behind an atomically swapped ``current`` symlink.

Layout under ``--rsync-dir``::

    current -> revisions/<session8>-<serial>     (relative symlink, swapped by rename)
    revisions/<session8>-<serial>/<module path>  (one complete tree per live revision)

A revision tree must stay unchanged while any client may still read it: the grace period, counted
from when it stopped being current (publication-server BCP).  Writing a full tree per revision
costs O(repository) per run, so trees form a *ring*: a tree whose grace has expired is renamed to
a temporary name, brought forward to the new revision by replaying the change log (O(changes
since its revision)), and renamed to its new name.  Unchanged files are hard links between trees:
one inode per object version, its mtime set once (RFC 9589 rule), shared by every tree.  Only when
no expired tree exists is a new one made, by hard-linking every file of the current tree.

Directories get a constant mtime (:data:`DIR_MTIME`) so ``rsync -t`` clients see no change where
there is none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import shutil
import threading
from pathlib import Path
from typing import Final, cast

from rpkirepo.errors import Reason, StorageError
from rpkirepo.fsutil import TMP_PREFIX, write_all

__all__ = ["DIR_MTIME", "BackgroundTree", "TreeWriter", "slot_name"]

#: Constant directory mtime (any constant will do, BCP §rsync): 2000-01-01T00:00:00Z.
DIR_MTIME: Final = 946684800

_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def slot_name(session_id: str, serial: int) -> str:
    return f"{session_id[:8]}-{serial}"


class TreeWriter:
    """Builds or updates one revision tree in a directory no client looks at yet.

    ``prefix`` is the path of the published base inside the rsync module (``sub/dir/``, or
    ``host/module/sub/`` with --rsync-include-host); object paths are relative to the base.
    """

    def __init__(
        self, root: Path, prefix: str, link_source: Path | None, *, fresh: bool = False
    ) -> None:
        self.root = root
        self.prefix = prefix
        self.link_source = link_source
        #: A fresh tree holds no files yet, so nothing needs unlinking before a create.
        self.fresh = fresh
        #: fsync each file written (small updates); otherwise the caller syncs the filesystem.
        self.fsync_files = False
        self._dirs: set[str] = set()
        self.touched_dirs: set[str] = set()
        self.files_written = 0

    @classmethod
    def new_tree(cls, revisions: Path, prefix: str, link_source: Path | None) -> TreeWriter:
        path = revisions / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise StorageError(Reason.STORAGE_IO, str(exc.strerror), path=str(path)) from exc
        writer = cls(path, prefix, link_source, fresh=True)
        writer._dirs.add("")
        writer.touched_dirs.add("")
        return writer

    def _parent(self, relpath: str) -> str:
        full = self.prefix + relpath
        parent = full.rpartition("/")[0]
        if parent not in self._dirs:
            os.makedirs(os.path.join(self.root, parent), mode=0o755, exist_ok=True)
            # Record every ancestor (and the root) so their mtimes are reset too.
            self.touched_dirs.add("")
            parts = parent.split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                self._dirs.add(d)
                self.touched_dirs.add(d)
        self.touched_dirs.add(parent)
        return full

    def write(self, relpath: str, data: bytes, mtime: int) -> None:
        """Create a new file (never overwrites) with the object's mtime."""
        full = self._parent(relpath)
        path = os.path.join(self.root, full)
        if not self.fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:
            fd = os.open(path, _CREATE, 0o644)
            try:
                write_all(fd, data)
                os.utime(fd, (mtime, mtime))
                if self.fsync_files:
                    os.fsync(fd)
                self.files_written += 1
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(Reason.STORAGE_IO, str(exc.strerror), path=path) from exc

    def link(self, relpath: str) -> None:
        """Hard-link the file at ``relpath`` from the link source tree (same inode, same mtime)."""
        if self.link_source is None:
            raise StorageError(Reason.STORAGE_UNEXPECTED, "no tree to link from", path=relpath)
        full = self._parent(relpath)
        src = os.path.join(self.link_source, full)
        dst = os.path.join(self.root, full)
        if not self.fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise StorageError(Reason.STORAGE_IO, str(exc.strerror), path=src) from exc
            # Too many links to one inode (identical content in very many places): copy it.
            shutil.copy2(src, dst, follow_symlinks=False)

    def remove(self, relpath: str) -> None:
        """Remove a file and any directories it leaves empty (up to the published base, which
        stays even when empty: rsync of a missing directory fails)."""
        full = self.prefix + relpath
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, full))
        parent = full.rpartition("/")[0]
        while parent and not self.prefix.startswith(parent + "/"):
            try:
                os.rmdir(os.path.join(self.root, parent))
            except OSError:
                break
            self._dirs.discard(parent)
            self.touched_dirs.discard(parent)
            parent = parent.rpartition("/")[0]
        self.touched_dirs.add(parent)

    def finish(self) -> None:
        """Give every directory touched the constant mtime (deepest first); with per-file
        fsync, also fsync those directories so links, unlinks and creations are durable.
        The published base directory exists even when nothing is published."""
        if self.prefix and not os.path.isdir(os.path.join(self.root, self.prefix)):
            self._parent("")
        for d in sorted(self.touched_dirs, key=lambda s: s.count("/"), reverse=True):
            path = os.path.join(self.root, d) if d else os.fspath(self.root)
            with contextlib.suppress(FileNotFoundError):
                os.utime(path, (DIR_MTIME, DIR_MTIME))
                if self.fsync_files:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def rename_to(self, path: Path) -> None:
        try:
            os.rename(self.root, path)
        except OSError as exc:
            raise StorageError(Reason.STORAGE_IO, str(exc.strerror), path=str(path)) from exc
        self.root = path


def reuse_tree(revisions: Path, name: str, prefix: str, link_source: Path) -> TreeWriter:
    """Take the expired tree ``name`` out of service (rename to a temporary name) for updating."""
    tmp = revisions / f"{TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        os.rename(revisions / name, tmp)
    except OSError as exc:
        raise StorageError(
            Reason.STORAGE_IO, str(exc.strerror), path=str(revisions / name)
        ) from exc
    return TreeWriter(tmp, prefix, link_source)


class BackgroundTree:
    """Runs a :class:`TreeWriter`'s writes and links on one background thread.

    Creating a file costs this kind of machine ~200 µs of kernel time that parallel creators do
    not shorten (the filesystem serialises them), while parsing, hashing and the mtime rule are
    Python work of about the same size: one writer thread beside the parser overlaps the two.
    The queue is bounded, so memory stays flat; the first error is raised by the next call.
    """

    _STOP: Final = object()

    def __init__(self, tree: TreeWriter, depth: int = 4096) -> None:
        self.tree = tree
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tree-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is BackgroundTree._STOP:
                return
            if self._error is not None:
                continue  # drain: the caller learns of the error at its next call
            try:
                op, path, data, mtime = cast(tuple[str, str, bytes, int], item)
                if op == "w":
                    self.tree.write(path, data, mtime)
                else:
                    self.tree.link(path)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, relpath: str, data: bytes, mtime: int) -> None:
        self._check()
        self._queue.put(("w", relpath, data, mtime))

    def link(self, relpath: str) -> None:
        self._check()
        self._queue.put(("l", relpath, b"", 0))

    def close(self) -> None:
        """Wait for every queued operation; raise the first error."""
        if self._thread.is_alive():
            self._queue.put(BackgroundTree._STOP)
            self._thread.join()
        self._check()
