"""Loading a module's current revision from disk into a :class:`~rpkirepo.rsync.Revision`.

This is the daemon's only filesystem code.  A module directory is what ``rpkirepo publish``
writes as ``--rsync-dir`` (rpkirepo.publish.rsync_tree): ``current`` is a symlink to
``revisions/<name>``, swapped atomically, and a revision tree never changes while it may be read.
So the symlink is resolved once, the tree it names is walked once without following any symlink
(a symlink, device, socket or FIFO inside it makes the revision unloadable: the daemon keeps
serving the previous one), every name is validated, and every file is read once, with
``O_NOFOLLOW``.  :class:`ModuleWatcher` polls ``current`` and swaps the revision atomically:
sessions hold the revision object they started with, so a client mid-transfer finishes on it.

A plain directory without ``current`` is served as it is (tests, hand-made trees); it is only
re-read when the daemon restarts.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from rpkirepo.errors import LimitExceeded, Reason, RpkiRepoError, StorageError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._model import Revision, RevisionBuilder

__all__ = ["ModuleWatcher", "load_revision", "resolve_current"]

log = logging.getLogger("rpkirepo.rsyncd")


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
                    data, mtime = _read_file(entry.path, limits.max_object_size)
                    builder.add_file(child, mtime, data)
                else:
                    raise StorageError(
                        Reason.RSYNC_BAD_NAME,
                        "symlink or special file in a revision",
                        path=os.fsdecode(entry.path),
                    )
    except OSError as exc:
        raise StorageError(Reason.RSYNC_REVISION, str(exc.strerror or exc), path=str(root)) from exc
    revision = builder.build()
    revision.max_flist_cache = limits.rsync_max_flist_cache
    return revision


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
