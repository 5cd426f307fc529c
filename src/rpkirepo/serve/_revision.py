"""Revisions of an RRDP directory: loaded whole, switched atomically, retired after a grace period.

The directory is what `rpkirepo publish` and `rpkirepo sync` write: ``DIR/notification.xml`` (and
its ``.gz`` sibling) names a snapshot and deltas by HTTPS URI; each lives under ``DIR`` at its
path relative to the notification's base URI (e.g. ``https://rrdp.example.net/rrdp/`` +
``<session>/<serial>/<random>/snapshot.xml``), with a ``.gz`` sibling.

A :class:`Revision` is one notification and every file it names, *loaded*: the notification
parsed and checked (:func:`~rpkirepo.rrdp.parser.parse_notification`), each named file opened
(``O_NOFOLLOW``, inside ``DIR``) and non-empty, files up to ``Limits.serve_memory_file_max``
(the notification, deltas) read into memory with their SHA-256 checked against the notification,
and ``.gz`` siblings opened (the notification's and the in-memory files' decompressed and compared
with the file).  Files kept on disk (snapshots) are not re-hashed: that would read gigabytes per
serial; the descriptor opened here is what is served, so a later replacement of the path cannot
change what a client of this revision gets.  A file whose ``(dev, inode, size)`` has not changed
since the previous revision is taken over without reading it again.

The URL paths are the URIs' paths, so a client fetches exactly what the notification says.  The
base is found by asking which suffix of the snapshot URI's path exists under ``DIR``; every other
URI must share that base and origin.

:class:`RevisionWatcher` polls the notification's stat signature (the adapter calls
:meth:`~RevisionWatcher.poll` every second).  When it changes, a new revision is loaded; only if
that succeeds is it swapped in (one assignment: every request sees the old revision or the new
one, never a mix).  A notification that cannot be loaded is logged once (reason
``serve-revision-unloadable``), counted, retried on each poll, and the last good revision stays.
Files that left the notification stay served for ``grace`` seconds, while they still exist on disk
(the publisher deletes them after its own grace period).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import stat as stat_mod
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from rpkirepo.errors import IntegrityError, LimitExceeded, Reason, RpkiRepoError, StorageError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rrdp.model import NotificationFile
from rpkirepo.rrdp.parser import parse_notification
from rpkirepo.serve._view import Body, Entry, FileKind, View, make_entry
from rpkirepo.uri import HttpsUri, path_under

__all__ = ["NOTIFICATION_NAME", "OpenFile", "Revision", "RevisionWatcher", "load_revision"]

log = logging.getLogger("rpkirepo.serve")

NOTIFICATION_NAME = "notification.xml"

Signature = tuple[int, int, int, int, int]


class OpenFile:
    """An open, read-only file descriptor that closes itself when the last reference goes.

    It has ``fileno()`` and a no-op ``seek()`` so that ``loop.sendfile`` accepts it; every read
    through it uses explicit offsets (``sendfile``/``pread``), so concurrent responses from one
    handle never disturb each other.
    """

    __slots__ = ("_fd", "dev", "ino", "path", "size")

    def __init__(self, path: str) -> None:
        self._fd = -1
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fd = fd
        st = os.fstat(fd)
        self.path = path
        self.size = st.st_size
        self.dev = st.st_dev
        self.ino = st.st_ino

    mode = "rb"  # loop.sendfile checks for binary mode

    def fileno(self) -> int:
        return self._fd

    def seek(self, offset: int, whence: int = 0) -> int:
        return offset

    def pread(self, count: int, offset: int) -> bytes:
        return os.pread(self._fd, count, offset)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Revision:
    """One loaded notification and its files (see the module documentation)."""

    session_id: str
    serial: int
    signature: Signature
    base_path: str
    entries: dict[str, Entry] = field(compare=False)


def _unloadable(detail: str, **context: str | int | None) -> StorageError:
    return StorageError(Reason.SERVE_REVISION_UNLOADABLE, detail, **context)


def _read_fd(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            raise _unloadable("file shrank while being read")
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or not d.eof:
        raise _unloadable("gzip sibling does not decompress within the size of its file")
    return out


def _base_path(uri: HttpsUri, rrdp_dir: Path) -> str:
    segs = uri.segments
    for k in range(len(segs)):
        rel = "/".join(segs[k:])
        try:
            candidate = path_under(rrdp_dir, rel)
        except RpkiRepoError:
            continue
        if candidate.is_file():
            return "/" + "".join(s + "/" for s in segs[:k])
    raise _unloadable(
        "the snapshot the notification names is not under the RRDP directory",
        uri=uri.uri,
        dir=str(rrdp_dir),
    )


class _Loader:
    def __init__(self, rrdp_dir: Path, limits: Limits, previous: Revision | None) -> None:
        self.dir = rrdp_dir
        self.limits = limits
        self.previous = previous.entries if previous is not None else {}

    def _open(self, path: Path) -> OpenFile:
        try:
            fh = OpenFile(str(path))
        except OSError as exc:
            raise _unloadable(f"cannot open: {exc.strerror}", path=str(path)) from exc
        if not stat_mod.S_ISREG(os.fstat(fh.fileno()).st_mode):
            fh.close()
            raise _unloadable("not a regular file", path=str(path))
        return fh

    def _reuse(self, url: str, fh: OpenFile, gz: Path) -> Entry | None:
        """The previous revision's entry for ``url`` if its files are the same inodes."""
        old = self.previous.get(url)
        if old is None or old.identity.file is None:
            return None
        of = old.identity.file
        if (of.dev, of.ino, of.size) != (fh.dev, fh.ino, fh.size):
            return None
        try:
            gst = os.stat(gz, follow_symlinks=False)
        except OSError:
            return old if old.gzip is None else None
        og = old.gzip
        if og is None or og.file is None:
            return None
        same_gz = (og.file.dev, og.file.ino, og.file.size) == (gst.st_dev, gst.st_ino, gst.st_size)
        return old if same_gz else None

    def file_entry(self, url: str, rel: str, kind: FileKind, sha256: bytes) -> Entry:
        try:
            path = path_under(self.dir, rel)
        except RpkiRepoError as exc:
            raise _unloadable("a URI maps outside the RRDP directory", path=rel) from exc
        fh = self._open(path)
        gz_path = path.with_name(path.name + ".gz")
        st = os.fstat(fh.fileno())
        if fh.size == 0:
            raise _unloadable("empty file", path=str(path))
        if fh.size > self.limits.max_rrdp_file_size:
            raise LimitExceeded(
                Reason.FILE_TOO_LARGE,
                "RRDP file too large",
                path=str(path),
                limit="max_rrdp_file_size",
            )
        etag = f'"{sha256.hex()}"'
        gz_etag = f'"{sha256.hex()}-gz"'
        small = fh.size <= self.limits.serve_memory_file_max
        if small:
            data = _read_fd(fh.fileno(), fh.size)
            if hashlib.sha256(data).digest() != sha256:
                raise IntegrityError(
                    Reason.HASH_MISMATCH,
                    "file does not match the hash the notification lists",
                    path=str(path),
                )
            if kind is not FileKind.SNAPSHOT:
                fh.close()
                identity = Body(len(data), etag, data=data)
                gzip_body = self._small_gz(gz_path, data, gz_etag)
                return make_entry(url, kind, identity, gzip_body, st.st_mtime)
        reused = self._reuse(url, fh, gz_path)
        if reused is not None:
            fh.close()
            return reused
        identity = Body(fh.size, etag, file=fh)
        gzip_body = None
        if gz_path.exists():
            gfh = self._open(gz_path)
            if gfh.size == 0:
                raise _unloadable("empty gzip sibling", path=str(gz_path))
            gzip_body = Body(gfh.size, gz_etag, file=gfh)
        return make_entry(url, kind, identity, gzip_body, st.st_mtime)

    def _small_gz(self, gz_path: Path, data: bytes, etag: str) -> Body | None:
        try:
            fh = self._open(gz_path)
        except StorageError:
            if gz_path.exists() or gz_path.is_symlink():
                raise
            return None
        try:
            if fh.size > self.limits.serve_memory_file_max:
                raise _unloadable("gzip sibling larger than the memory cap", path=str(gz_path))
            gz = _read_fd(fh.fileno(), fh.size)
        finally:
            fh.close()
        try:
            plain = _gunzip(gz, len(data))
        except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
            raise _unloadable("gzip sibling is not valid gzip", path=str(gz_path)) from exc
        if plain != data:
            raise _unloadable("gzip sibling does not match its file", path=str(gz_path))
        return Body(len(gz), etag, data=gz)

    def load(self) -> Revision:
        npath = self.dir / NOTIFICATION_NAME
        fh = self._open(npath)
        try:
            st = os.fstat(fh.fileno())
            if st.st_size > self.limits.max_notification_size:
                raise LimitExceeded(
                    Reason.FILE_TOO_LARGE,
                    "notification too large",
                    limit="max_notification_size",
                    path=str(npath),
                )
            data = _read_fd(fh.fileno(), st.st_size)
        finally:
            fh.close()
        notification: NotificationFile = parse_notification(data, limits=self.limits)
        snap = notification.snapshot
        base = _base_path(snap.uri, self.dir)
        origin = snap.uri.origin
        entries: dict[str, Entry] = {}
        npath_url = base + NOTIFICATION_NAME
        refs: list[tuple[HttpsUri, FileKind, bytes]] = [
            (snap.uri, FileKind.SNAPSHOT, snap.hash.digest)
        ]
        refs += [(d.uri, FileKind.DELTA, d.hash.digest) for d in notification.deltas]
        for uri, kind, digest in refs:
            if uri.origin != origin or not uri.path.startswith(base):
                raise _unloadable("URIs of the notification do not share one base", uri=uri.uri)
            url = uri.path
            if url in entries or url == npath_url:
                raise _unloadable("a URI is named twice", uri=uri.uri)
            entries[url] = self.file_entry(url, url[len(base) :], kind, digest)
        identity = Body(len(data), f'"{hashlib.sha256(data).hexdigest()}"', data=data)
        gz = self._small_gz(
            npath.with_name(NOTIFICATION_NAME + ".gz"),
            data,
            f'"{hashlib.sha256(data).hexdigest()}-gz"',
        )
        entries[npath_url] = make_entry(npath_url, FileKind.NOTIFICATION, identity, gz, st.st_mtime)
        return Revision(
            session_id=notification.session_id.value,
            serial=notification.serial,
            signature=_signature(st),
            base_path=base,
            entries=entries,
        )


def load_revision(
    rrdp_dir: Path, limits: Limits = DEFAULT_LIMITS, previous: Revision | None = None
) -> Revision:
    """Load the revision ``rrdp_dir/notification.xml`` names; raises an :class:`RpkiRepoError`
    (mostly ``serve-revision-unloadable``) when it is not complete and consistent."""
    return _Loader(rrdp_dir, limits, previous).load()


@dataclass(slots=True)
class _Retired:
    entry: Entry
    until: float
    disk: Path


class RevisionWatcher:
    """The current revision, files in their grace period, and the :class:`View` of both."""

    def __init__(self, rrdp_dir: Path, *, grace: float, limits: Limits = DEFAULT_LIMITS) -> None:
        self.dir = rrdp_dir
        self.grace = grace
        self.limits = limits
        self.current: Revision | None = None
        self.retired: dict[str, _Retired] = {}
        self.view: View = View({})
        self.failures = 0
        self.switches = 0
        self._failed_signature: Signature | None = None

    def stat_signature(self) -> Signature | None:
        try:
            return _signature(os.stat(self.dir / NOTIFICATION_NAME))
        except OSError:
            return None

    def needs_load(self) -> bool:
        sig = self.stat_signature()
        if sig is None:
            return False
        return self.current is None or sig != self.current.signature

    def load(self) -> Revision | None:
        """Load the notification on disk (no switch); ``None`` (logged, counted) on failure.
        Safe to run in a worker thread."""
        sig = self.stat_signature()
        try:
            return load_revision(self.dir, self.limits, self.current)
        except (RpkiRepoError, OSError) as exc:
            self.failures += 1
            if sig != self._failed_signature:
                self._failed_signature = sig
                log.warning(
                    "keeping the last good revision: %s",
                    exc,
                    extra={"reason": Reason.SERVE_REVISION_UNLOADABLE.value},
                )
            return None

    def switch(self, rev: Revision, now: float | None = None) -> None:
        """Make ``rev`` current (on the event loop: one assignment publishes the new view)."""
        now = time.time() if now is None else now
        old = self.current
        if old is not None and rev.signature == old.signature:
            return
        if old is not None:
            for path, entry in old.entries.items():
                if path not in rev.entries and entry.kind is not FileKind.NOTIFICATION:
                    disk = self.dir / path[len(old.base_path) :]
                    self.retired[path] = _Retired(entry, now + self.grace, disk)
        for path in rev.entries:
            self.retired.pop(path, None)
        self.current = rev
        self.switches += 1
        self._failed_signature = None
        self._publish()
        log.info(
            "serving serial %d of session %s (%d files, %d in grace)",
            rev.serial,
            rev.session_id,
            len(rev.entries),
            len(self.retired),
            extra={"reason": "revision-switch"},
        )

    def expire(self, now: float | None = None) -> int:
        """Drop retired files whose grace has passed or which left the disk; returns how many."""
        now = time.time() if now is None else now
        gone = []
        for path, r in self.retired.items():
            if r.until <= now:
                gone.append(path)
                continue
            try:
                os.stat(r.disk, follow_symlinks=False)
            except (OSError, ValueError):
                gone.append(path)
        for path in gone:
            del self.retired[path]
        if gone:
            self._publish()
        return len(gone)

    def _publish(self) -> None:
        rev = self.current
        merged = {p: r.entry for p, r in self.retired.items()}
        if rev is not None:
            merged.update(rev.entries)
        self.view = View(
            merged,
            session_id=rev.session_id if rev else None,
            serial=rev.serial if rev else None,
        )
