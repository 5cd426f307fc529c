"""Loading a module's current revision from disk into a :class:`~rpkirepo.rsync.Revision`.

This is the daemon's only filesystem code.  A module directory is what ``rpkirepo publish``
writes as ``--rsync-dir`` (rpkirepo.publish.rsync_tree): ``current`` is a symlink to
``revisions/<name>``, swapped atomically, and a revision tree never changes while it may be read.
So the symlink is resolved once, the tree it names is walked once without following any symlink
(a symlink, device, socket or FIFO inside it makes the revision unloadable: the daemon keeps
serving the previous one), every name is validated, and every file is read once, with
``O_NOFOLLOW``, for its size, mtime and MD5; the bodies are not kept.

Bodies are read again when a client asks for them, by :class:`RevisionFiles`: the revision
directory is opened once at load and every file is opened relative to that descriptor
(``O_NOFOLLOW``) and read with ``pread``, so a later swap of ``current`` (or a rename of the
revision directory) does not change what a loaded revision serves.  A file that is gone or
whose size differs from the one listed is an error for the session that asked (the client
gets an rsync error message), never a wrong body; a same-size rewrite, which publish never
does, is caught by the client's whole-file MD5 check, since the digest sent is the one
computed at load.  The descriptor is closed when the last session holding the revision ends.
These reads happen on the event loop: they are page-cache reads of small files (a revision
was just written, and RPKI objects are kilobytes), one per requested file.

:class:`ModuleWatcher` polls ``current`` and swaps the revision atomically: sessions hold the
revision object they started with, so a client mid-transfer finishes on it.

A plain directory without ``current`` is served as it is (tests, hand-made trees); it is only
re-read when the daemon restarts.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import secrets
import stat
import weakref
from pathlib import Path
from typing import Final

from rpkirepo.errors import LimitExceeded, Reason, RpkiRepoError, StorageError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._model import Revision, RevisionBuilder
from rpkirepo.rsync.md4_native import md4_digest

__all__ = ["ModuleWatcher", "RevisionFiles", "load_revision", "resolve_current"]

log = logging.getLogger("rpkirepo.rsyncd")

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class RevisionFiles:
    """The :class:`~rpkirepo.rsync._model.BodySource` of one loaded revision directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._closer = weakref.finalize(self, os.close, self._dir)

    def close(self) -> None:
        self._closer()

    def read(self, path: bytes, offset: int, size: int, total: int) -> bytes:
        try:
            fd = os.open(path, _OPEN_FLAGS, dir_fd=self._dir)
            try:
                # At the end of the file, one byte more shows a file that grew.
                data = os.pread(fd, size + 1 if offset + size >= total else size, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(
                Reason.RSYNC_REVISION,
                f"cannot read a file of the revision: {exc.strerror}",
                path=os.fsdecode(path),
            ) from None
        if len(data) != size:
            raise StorageError(
                Reason.RSYNC_REVISION,
                "file changed under a loaded revision",
                path=os.fsdecode(path),
            )
        return data


def resolve_current(module_dir: Path) -> Path:
    """The revision directory ``module_dir/current`` points to (or ``module_dir`` itself when
    there is no ``current``)."""
    current = module_dir / "current"
    try:
        if current.is_symlink():
            return Path(os.path.realpath(current))
        if current.is_dir():
            return current
    except OSError as exc:
        raise StorageError(Reason.RSYNC_REVISION, str(exc.strerror), path=str(current)) from exc
    return module_dir


def _digest_file(path: bytes, size_cap: int) -> tuple[int, int, bytes]:
    """(size, mtime, MD5) of a regular file, read once."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(Reason.RSYNC_BAD_NAME, "not a regular file", path=os.fsdecode(path))
        if st.st_size > size_cap:
            raise LimitExceeded(
                Reason.FILE_TOO_LARGE, "file too large to serve", limit="max_object_size",
                path=os.fsdecode(path),
            )  # fmt: skip
        chunks = []
        remaining = st.st_size
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) != st.st_size or os.read(fd, 1):
            raise StorageError(
                Reason.RSYNC_REVISION, "file changed while read", path=os.fsdecode(path)
            )
        return len(data), int(st.st_mtime), hashlib.md5(data, usedforsecurity=False).digest()
    finally:
        os.close(fd)


def load_revision(root: Path, limits: Limits = DEFAULT_LIMITS, name: str = "") -> Revision:
    """Walk ``root`` (a revision tree) into a :class:`Revision`; raises :class:`RpkiRepoError`
    (``rsync-bad-name``, ``rsync-revision-unloadable``, a limit) when it cannot be served."""
    builder = RevisionBuilder(
        name or root.name,
        max_entries=limits.rsync_max_tree_entries,
        seed=secrets.randbits(31),
    )
    base = os.fsencode(root)
    try:
        source = RevisionFiles(root)
    except OSError as exc:
        raise StorageError(Reason.RSYNC_REVISION, str(exc.strerror or exc), path=str(root)) from exc
    try:
        builder.set_root_mtime(int(os.stat(base).st_mtime))
        stack: list[bytes] = [b""]
        while stack:
            rel = stack.pop()
            directory = base + b"/" + rel if rel else base
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                child = rel + b"/" + entry.name if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    builder.add_dir(child, int(st.st_mtime))
                    stack.append(child)
                elif stat.S_ISREG(st.st_mode):
                    size, mtime, md5 = _digest_file(entry.path, limits.max_object_size)
                    builder.add_file_digest(child, mtime, size, md5)
                else:
                    raise StorageError(
                        Reason.RSYNC_BAD_NAME,
                        "symlink or special file in a revision",
                        path=os.fsdecode(entry.path),
                    )
    except OSError as exc:
        source.close()
        raise StorageError(Reason.RSYNC_REVISION, str(exc.strerror or exc), path=str(root)) from exc
    except BaseException:
        source.close()
        raise
    revision = builder.build(source)
    revision.max_flist_cache = limits.rsync_max_flist_cache
    revision.deflate_cache_bytes = limits.rsync_deflate_cache_bytes
    revision.md4 = md4_digest()
    del builder
    _release_free_memory()
    return revision


def _release_free_memory() -> None:
    """Hand the memory the walk used for its temporary rows back to the system (glibc keeps
    freed heap pages otherwise): the daemon's resident size is then the model's."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class ModuleWatcher:
    """One module: its directory, its current revision, and the poll that replaces it."""

    def __init__(self, name: str, directory: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.name = name
        self.directory = directory
        self.limits = limits
        self.revision: Revision | None = None
        self.target: Path | None = None
        self.failed_target: Path | None = None
        self.loads = 0

    def get(self) -> Revision | None:
        return self.revision

    def changed(self) -> Path | None:
        """The new revision directory to load, if ``current`` moved (cheap: one readlink)."""
        target = resolve_current(self.directory)
        if target == self.target or target == self.failed_target:
            return None
        return target

    def load(self, target: Path) -> Revision | None:
        """Load ``target`` (blocking; run it in a thread).  On failure, log and keep serving the
        previous revision."""
        try:
            revision = load_revision(target, self.limits)
        except RpkiRepoError as exc:
            self.failed_target = target
            log.error(
                "module %s: cannot load revision %s: %s",
                self.name, target, exc, extra={"reason": exc.reason.value},
            )  # fmt: skip
            return None
        return revision

    def install(self, target: Path, revision: Revision) -> None:
        """Make ``revision`` current: one reference assignment, so atomic for new sessions."""
        self.revision = revision
        self.target = target
        self.failed_target = None
        self.loads += 1
        log.info(
            "module %s: serving revision %s (%d files, %d bytes)",
            self.name, revision.name, revision.file_count, revision.total_size,
        )  # fmt: skip
