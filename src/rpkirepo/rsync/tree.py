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
import errno
import hashlib
import logging
import os
import secrets
import stat
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Final

from rpkirepo.errors import LimitExceeded, Reason, RpkiRepoError, StorageError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._filters import FilterSet
from rpkirepo.rsync._model import (
    COMMON_FLIST,
    SPOOL_DIR_SEGMENT,
    SPOOL_FRAME,
    Revision,
    RevisionBuilder,
    spool_segment,
)
from rpkirepo.rsync._wire import Msg, frame_head
from rpkirepo.rsync.md4_native import md4_digest

__all__ = [
    "DEFAULT_SPOOL_DIR",
    "ModuleWatcher",
    "RevisionFiles",
    "RevisionSpool",
    "load_revision",
    "resolve_current",
]

log = logging.getLogger("rpkirepo.rsyncd")

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FULL_FRAME_HEAD: Final = frame_head(Msg.DATA, SPOOL_FRAME)
#: Where the daemon puts revision spools unless told otherwise ($TMPDIR, else /tmp).
DEFAULT_SPOOL_DIR: Final = Path(tempfile.gettempdir())


class RevisionSpool:
    """The :class:`~rpkirepo.rsync._model.SpoolSource` of one loaded revision: an unlinked
    temporary file (``O_TMPFILE``) in the spool directory, so nothing is left behind by a crash,
    and its space is freed when the last session holding the revision ends.  Written at load
    (the answer stream: every position's answer, :meth:`add`), then only appended to (encoded
    file lists, :meth:`append`); sent from with ``sendfile`` and read with ``pread``."""

    def __init__(self, fd: int, where: Path) -> None:
        self.where = where
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self._frame = bytearray()  # the answer stream's frame being filled
        #: bytes of the answer stream, and of the file (frame headers and lists included)
        self.stream_size = 0
        self.size = 0

    @classmethod
    def create(cls, directory: Path) -> RevisionSpool | None:
        """A new empty spool in ``directory``, or ``None`` (logged) when none can be made."""
        try:
            try:
                fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                # A filesystem without O_TMPFILE: a named file, unlinked at once.
                fd, name = tempfile.mkstemp(prefix="rpkirepo-spool-", dir=directory)
                os.unlink(name)
        except OSError as exc:
            log.warning(
                "cannot make a spool in %s: %s; serving without one", directory, exc.strerror,
                extra={"reason": Reason.STORAGE_IO.value},
            )  # fmt: skip
            return None
        return cls(fd, directory)

    def add(self, answer: bytes) -> int:
        """While the revision loads: add ``answer`` to the answer stream, which is written in
        MSG_DATA frames of :data:`SPOOL_FRAME` bytes, a frame at a time (no buffer beyond the
        frame being filled: a large one would stay in the allocator's heap after the load);
        returns where in the stream it starts, or -1 (logged) when the spool could not be
        written."""
        at = self.stream_size
        self.stream_size += len(answer)
        frame = self._frame
        frame += answer
        if len(frame) >= SPOOL_FRAME:
            full = len(frame) - len(frame) % SPOOL_FRAME
            with memoryview(frame) as view:
                for off in range(0, full, SPOOL_FRAME):
                    if not self._write([_FULL_FRAME_HEAD, view[off : off + SPOOL_FRAME]]):
                        return -1
            del frame[:full]
        return at

    def finish(self) -> bool:
        """End the answer stream (its last, shorter frame); ``False`` (logged) on failure."""
        frame = self._frame
        if not frame:
            return True
        done = self._write([frame_head(Msg.DATA, len(frame)), frame])
        self._frame = bytearray()
        return done

    def append(self, data: bytes) -> int:
        """After :meth:`finish`: store ``data`` (whole frames) at the end of the file; returns
        its file offset, or -1 (logged) when it could not be written, and the spool is then as
        it was before."""
        at = self.size
        return at if self._write([data]) else -1

    def _write(self, parts: list[bytes | bytearray | memoryview]) -> bool:
        start = self.size
        total = sum(len(p) for p in parts)
        try:
            done = os.pwritev(self._fd, parts, start)
            if done < total:  # a short write: the rest from one joined copy
                whole = memoryview(b"".join(parts))
                while done < total:
                    done += os.pwrite(self._fd, whole[done:], start + done)
        except OSError as exc:
            log.warning(
                "cannot write the spool in %s: %s", self.where, exc.strerror,
                extra={"reason": Reason.STORAGE_IO.value},
            )  # fmt: skip
            return False
        self.size = start + total
        return True

    def read(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise StorageError(
                Reason.RSYNC_REVISION, f"cannot read the spool: {exc.strerror}"
            ) from None
        if len(data) != size:
            raise StorageError(Reason.RSYNC_REVISION, "short read from the spool")
        return data

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._closer()


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


def _read_file(path: bytes, size_cap: int) -> tuple[bytes, int]:
    """(bytes, mtime) of a regular file, read once."""
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
        return data, int(st.st_mtime)
    finally:
        os.close(fd)


def load_revision(
    root: Path, limits: Limits = DEFAULT_LIMITS, name: str = "", *, spool_dir: Path | None = None
) -> Revision:
    """Walk ``root`` (a revision tree) into a :class:`Revision`; raises :class:`RpkiRepoError`
    (``rsync-bad-name``, ``rsync-revision-unloadable``, a limit) when it cannot be served.

    With ``spool_dir``, every position's full-sync answer is also written, in position order,
    to a :class:`RevisionSpool` there (see :func:`~rpkirepo.rsync._model.spool_segment`); a spool
    that cannot be made or written (a full disk) is logged and left out, never an error.
    """
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
    spool = RevisionSpool.create(spool_dir) if spool_dir is not None else None
    try:
        builder.set_root_mtime(int(os.stat(base).st_mtime))
        # Depth first, per directory its files (by name) then its subdirectories (by name +
        # "/"), each followed by its subtree: the protocol 29 order of positions, so the spool
        # gets its segments in position order.
        stack: list[tuple[bytes, int]] = [(b"", 0)]
        while stack:
            rel, dir_mtime = stack.pop()
            if rel:
                at = -1
                if spool is not None:
                    at = spool.add(SPOOL_DIR_SEGMENT)
                    if at < 0:
                        spool = None  # could not be written: logged, the revision has none
                builder.add_dir(rel, dir_mtime, at)
            directory = base + b"/" + rel if rel else base
            files: list[tuple[bytes, bytes]] = []
            subdirs: list[tuple[bytes, bytes, int]] = []
            with os.scandir(directory) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append((entry.name + b"/", entry.name, int(st.st_mtime)))
                    elif stat.S_ISREG(st.st_mode):
                        files.append((entry.name, entry.path))
                    else:
                        raise StorageError(
                            Reason.RSYNC_BAD_NAME,
                            "symlink or special file in a revision",
                            path=os.fsdecode(entry.path),
                        )
            files.sort()
            subdirs.sort()
            for file_name, file_path in files:
                child = rel + b"/" + file_name if rel else file_name
                data, mtime = _read_file(file_path, limits.max_object_size)
                md5 = hashlib.md5(data, usedforsecurity=False).digest()
                at = -1
                if spool is not None:
                    at = spool.add(spool_segment(data))
                    if at < 0:
                        spool = None
                builder.add_file_digest(child, mtime, len(data), md5, at)
            stack.extend(
                (rel + b"/" + name if rel else name, mtime) for _k, name, mtime in reversed(subdirs)
            )
        if spool is not None and not spool.finish():
            spool = None
        revision = builder.build(source, spool)  # raises on a name given twice
    except OSError as exc:
        source.close()
        if spool is not None:
            spool.close()
        raise StorageError(Reason.RSYNC_REVISION, str(exc.strerror or exc), path=str(root)) from exc
    except BaseException:
        source.close()
        if spool is not None:
            spool.close()
        raise
    if spool is not None and revision.spool is None:
        log.warning("revision %s: spool not in position order, not used", revision.name)
        spool.close()
    revision.max_flist_cache = limits.rsync_max_flist_cache
    revision.deflate_cache_bytes = limits.rsync_deflate_cache_bytes
    revision.md4 = md4_digest()
    revision.flist_lock = threading.Lock()  # the daemon builds file lists in worker threads
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

    def __init__(
        self,
        name: str,
        directory: Path,
        limits: Limits = DEFAULT_LIMITS,
        *,
        spool_dir: Path | None = DEFAULT_SPOOL_DIR,
    ) -> None:
        self.name = name
        self.directory = directory
        self.limits = limits
        self.spool_dir = spool_dir
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
            revision = load_revision(target, self.limits, spool_dir=self.spool_dir)
            # The list most clients ask for, built here rather than for the first of them.
            revision.file_list(COMMON_FLIST, FilterSet(), self.limits.rsync_max_filter_work)
            _release_free_memory()  # what encoding the list took and freed
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
