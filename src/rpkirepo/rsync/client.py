"""Fetch one rsync module directory into an empty local directory: the RP side's rsync.

Theory of operation.  :func:`fetch_module` is the blocking adapter around the sans-I/O
:class:`~rpkirepo.rsync._receiver.Receiver`: it connects (``rsync_client_connect_timeout``),
moves bytes between a non-blocking socket and the receiver with ``poll`` (no byte from the
server for ``rsync_client_io_timeout`` seconds, or the caller's overall monotonic ``deadline``,
ends the fetch with ``rsync-client-timeout``), and does the two things the protocol core must
not: deciding what to fetch and writing files.

* When the whole, validated file list has arrived, every listed directory is created (``mkdir``
  relative to its parent's descriptor, so no path is ever resolved through a symlink), and each
  regular file is either linked from ``basis`` (a regular file there, found with ``lstat``
  through directory descriptors opened with ``O_NOFOLLOW``, with the listed size and mtime:
  rsync's quick check; ``os.link``, or a copy across devices) or requested whole.  Files over
  ``max_object_size`` (or under ``min_size``), not matching ``include_extensions``, and
  symlinks, devices and specials are never requested or created: they are counted in
  ``skipped``.
* A received file has already passed its length and whole-file checksum checks; it is written
  with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to its directory's descriptor, and its mtime set,
  by a writer thread (in order, at most ``WRITE_QUEUE_BYTES`` queued), so that the kernel's
  file-creation work overlaps the protocol work.
* With ``on_file`` (a :data:`FileSink`), every file kept is reported instead of being listed in
  the result: a linked one as such when the plan is made, a received one with the SHA-256 of
  its bytes when it is handed to the writer, so that a caller keeping a state of the tree
  (``rpkirepo fetch``'s store) never has to read the tree back.

Like rsync's own generator, requests are pipelined (a window at a time) while answers are read,
so a fetch costs one round trip per phase, not per file.  Protocol 27's MD4 comes from
libcrypto's low-level ``MD4()`` through ctypes when it is there (the pure-Python one is ~400x
slower; protocols 30-31 use hashlib's MD5).  Only
:class:`~rpkirepo.errors.RpkiRepoError` subclasses escape: the server's faults as
:class:`RemoteProtocolError` (``rsync-client-*`` reasons), caps as :class:`LimitExceeded`, local
disk trouble as :class:`StorageError`.  On failure ``dest`` may hold partial content: the caller
throws it away.

:func:`fetch_module_external` does the same job with the ``rsync`` program (``--compare-dest``
for the basis), then checks what it wrote as if it came from the wire: every name and file type
below ``dest`` is validated again (defence in depth against CVE-2024-12087-class client bugs);
with ``on_file``, the files it wrote are read once to be hashed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rpkirepo.errors import (
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
    StorageError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._receiver import (
    NEED_DATA,
    EntryKind,
    FileListReceived,
    FileReceived,
    ListEntry,
    Receiver,
    ServerMessage,
    check_name,
    include_rules,
)
from rpkirepo.rsync.md4_native import md4_digest
from rpkirepo.uri import RsyncUri

__all__ = ["FileSink", "ModuleFetch", "ReceivedFile", "fetch_module", "fetch_module_external"]

log = logging.getLogger("rpkirepo.rsync.client")

RSYNC_PORT: Final = 873
READ_SIZE: Final = 256 * 1024
DIR_FD_CACHE: Final = 128
EXTERNAL_STDERR_MAX: Final = 2000
#: Verified file data queued for the writer thread before the protocol side waits.
WRITE_QUEUE_BYTES: Final = 32 * 1024 * 1024
#: Basis files linked per writer job (one queue hand-over for this many links).
LINK_BATCH: Final = 512
_O_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    path: str  # relative to the requested directory URI, '/'-separated, validated
    size: int
    mtime: int  # seconds
    fetched: bool  # False: hard-linked from basis (size and mtime matched: the quick check)


#: Told about each regular file a fetch puts in ``dest``: ``(path, size, mtime, sha256)``, the
#: path as in :class:`ReceivedFile`, and the SHA-256 of the bytes received, or None for a file
#: linked (or copied) from ``basis``'s file at the same path.  Called on the caller's thread,
#: before the file is necessarily on disk (a fetch that fails later raises all the same); an
#: exception it raises ends the fetch.
FileSink = Callable[[str, int, int, bytes | None], None]


@dataclass(frozen=True, slots=True)
class ModuleFetch:
    #: Every regular file listed (after include rules), in order; empty when the files were
    #: reported to an ``on_file`` sink instead (no object per file kept to the end).
    files: tuple[ReceivedFile, ...]
    directories: tuple[str, ...]
    skipped: int  # symlinks, devices, specials, excluded, over max_object_size, under min_size
    protocol: int
    bytes_received: int  # wire bytes
    files_fetched: int


# --- local files ----------------------------------------------------------------------------


def _storage(exc: OSError, what: str, path: str) -> StorageError:
    return StorageError(Reason.STORAGE_IO, f"{what}: {exc.strerror or exc}", path=path[:200])


class _Tree:
    """A directory reached only through descriptors: every component below the root is opened
    with ``O_NOFOLLOW`` relative to its parent, so a symlink can never redirect us."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage(exc, "cannot open directory", str(root)) from None
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.RLock()  # the writer thread and the protocol side share it

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            os.close(self.root_fd)

    def dir_fd(self, rel: str) -> int:
        """Descriptor of directory ``rel`` ('' is the root); raises OSError.  The descriptor
        stays valid until :meth:`close` only for the thread holding the tree's lock."""
        if not rel:
            return self.root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parent, _, base = rel.rpartition("/")
        fd = os.open(base, _O_DIR, dir_fd=self.dir_fd(parent))
        self._fds[rel] = fd
        while len(self._fds) > DIR_FD_CACHE:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def mkdir(self, rel: str) -> None:
        parent, _, base = rel.rpartition("/")
        try:
            with self._lock:
                os.mkdir(base, 0o755, dir_fd=self.dir_fd(parent))
        except OSError as exc:
            raise _storage(exc, "cannot create directory", rel) from None

    def write(self, rel: str, data: bytes, mtime: int) -> None:
        with self._lock:
            self._write(rel, data, mtime)

    def _write(self, rel: str, data: bytes, mtime: int) -> None:
        parent, _, base = rel.rpartition("/")
        try:
            fd = os.open(base, _O_NEW, 0o644, dir_fd=self.dir_fd(parent))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                ns = mtime * 1_000_000_000
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)
        except OSError as exc:
            raise _storage(exc, "cannot write file", rel) from None

    def unchanged(self, entries: Sequence[ListEntry], indices: list[int]) -> list[bool]:
        """For each of ``entries[indices]`` (files), whether it is here as a regular file (not
        followed) with its listed size and mtime: rsync's quick check.  One ``lstat`` each;
        the lock is taken once, and a directory's descriptor looked up once for a run of its
        files (list order keeps a directory's files together)."""
        out: list[bool] = []
        last: str | None = None
        fd: int | None = None
        with self._lock:
            for i in indices:
                e = entries[i]
                parent, _, base = e.name.rpartition("/")
                if parent != last:
                    last = parent
                    try:
                        fd = self.dir_fd(parent)
                    except OSError:
                        fd = None
                if fd is None:  # no such directory in the basis
                    out.append(False)
                    continue
                try:
                    st = os.stat(base, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    out.append(False)
                    continue
                out.append(
                    stat.S_ISREG(st.st_mode)
                    and st.st_size == e.size
                    and st.st_mtime_ns // 1_000_000_000 == e.mtime
                )
        return out

    def link_into(self, rel: str, dest: _Tree, mtime: int) -> None:
        """Hard-link ``rel`` into ``dest`` (a copy when linking is not possible)."""
        with self._lock, dest._lock:
            self._link_into(rel, dest, mtime)

    def link_many(self, entries: list[ListEntry], dest: _Tree) -> None:
        """:meth:`link_into` for each entry (one writer job): both locks taken once, and the
        directories' descriptors looked up once for a run of files in one directory."""
        last: str | None = None
        src_fd = dst_fd = -1
        with self._lock, dest._lock:
            for e in entries:
                parent, _, base = e.name.rpartition("/")
                try:
                    if parent != last:
                        src_fd, dst_fd = self.dir_fd(parent), dest.dir_fd(parent)
                        last = parent
                    os.link(base, base, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                        raise _storage(exc, "cannot link or copy from basis", e.name) from None
                self._link_into(e.name, dest, e.mtime)  # a copy, or the error
                last = None  # it may have opened other descriptors

    def _link_into(self, rel: str, dest: _Tree, mtime: int) -> None:
        parent, _, base = rel.rpartition("/")
        try:
            src_fd = self.dir_fd(parent)
            dst_fd = dest.dir_fd(parent)
            try:
                os.link(base, base, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _storage(exc, "cannot link or copy from basis", rel) from None
        dest.write(rel, data, mtime)


class _Writer:
    """Writes verified files (and links basis files) in order, in a thread, so that the
    kernel's file-creation time overlaps the protocol work.  At most ``WRITE_QUEUE_BYTES`` of
    data wait (a larger file waits alone); the first error stops it and is re-raised to the
    protocol side at its next :meth:`put` or at :meth:`finish`."""

    def __init__(self, dest: _Tree) -> None:
        self.dest = dest
        self._items: deque[Callable[[], None]] = deque()
        self._sizes: deque[int] = deque()
        self._queued = 0
        self._closed = False
        self._error: RpkiRepoError | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="rsync-client-writer", daemon=True)
        self._thread.start()

    def put(self, job: Callable[[], None], size: int = 0) -> None:
        with self._cv:
            while self._queued and self._queued + size > WRITE_QUEUE_BYTES and not self._error:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            self._items.append(job)
            self._sizes.append(size)
            self._queued += size
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._closed:
                    self._cv.wait()
                if not self._items:
                    return
                job = self._items.popleft()
                size = self._sizes.popleft()
            try:
                job()
            except RpkiRepoError as exc:
                error: RpkiRepoError | None = exc
            except OSError as exc:  # pragma: no cover - the jobs map their own OSErrors
                error = _storage(exc, "cannot write", str(self.dest.root))
            else:
                error = None
            with self._cv:
                self._queued -= size
                if error is not None:
                    self._error = error
                    self._items.clear()
                    self._sizes.clear()
                    self._queued = 0
                    self._closed = True
                self._cv.notify_all()
            if error is not None:
                return

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait until everything queued is on disk; raise the writer's error, if any."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        self.check()

    def abort(self) -> None:
        with self._cv:
            self._closed = True
            self._items.clear()
            self._sizes.clear()
            self._queued = 0
            self._cv.notify_all()
        self._thread.join()


def _extensions(include_extensions: tuple[str, ...] | None) -> frozenset[str] | None:
    if include_extensions is None:
        return None
    for ext in include_extensions:
        if not (isinstance(ext, str) and ext.isascii() and ext.isalnum() and len(ext) <= 16):
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "bad file name extension", extension=repr(ext)
            )
    return frozenset(include_extensions)


def _extension(name: str) -> str:
    """What follows the last dot of the file name ('' without one).  An extension never holds a
    '/', so the whole path can be searched: a dot in a directory's name yields no extension."""
    _, dot, ext = name.rpartition(".")
    return ext if dot and "/" not in ext else ""


# --- the native client ----------------------------------------------------------------------


def _timeout(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(Reason.RSYNC_CLIENT_TIMEOUT, detail)


def _connect(uri: RsyncUri, limits: Limits, deadline: float) -> socket.socket:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout("deadline passed before connecting")
    timeout = min(float(limits.rsync_client_connect_timeout), left)
    port = uri.port or RSYNC_PORT
    try:
        sock = socket.create_connection((uri.host, port), timeout=timeout)
    except TimeoutError:
        raise _timeout(f"connecting to {uri.host}:{port} timed out") from None
    except OSError as exc:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_CONNECT, f"cannot connect to {uri.host}:{port}: {exc}"
        ) from None
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Fetch:
    """One native fetch: the plan made from the file list, and its progress."""

    def __init__(
        self,
        receiver: Receiver,
        dest: _Tree,
        basis: _Tree | None,
        limits: Limits,
        extensions: frozenset[str] | None,
        min_size: int,
        names: frozenset[str] | None = None,
        on_file: FileSink | None = None,
    ) -> None:
        self.names = names
        self.on_file = on_file
        self.receiver = receiver
        self.dest = dest
        self.writer = _Writer(dest)
        self.basis = basis
        self.limits = limits
        self.extensions = extensions
        self.min_size = min_size
        self.entries: tuple[ListEntry, ...] = ()
        self.listed: list[int] = []  # indices of the regular files we keep, in list order
        self.linked: set[int] = set()
        self.directories: list[str] = []
        self.skipped = 0
        self.fetched = 0

    def plan(self, event: FileListReceived) -> None:
        self.entries = entries = event.entries
        for e in entries:
            if e.kind is EntryKind.DIR and e.name != ".":
                self.dest.mkdir(e.name)
                self.directories.append(e.name)
        kept: list[int] = []
        max_size, min_size = self.limits.max_object_size, self.min_size
        extensions, names = self.extensions, self.names
        skipped = 0
        for i, e in enumerate(entries):
            if e.kind is not EntryKind.FILE:
                if e.kind is EntryKind.OTHER:
                    skipped += 1
                continue
            if (
                e.size > max_size
                or e.size < min_size
                or (extensions is not None and _extension(e.name) not in extensions)
                or (names is not None and e.name not in names)
            ):
                skipped += 1
                continue
            kept.append(i)
        self.skipped += skipped
        basis = self.basis
        same = basis.unchanged(entries, kept) if basis is not None else [False] * len(kept)
        wanted: list[int] = []
        held: list[int] = []
        for i, hit in zip(kept, same, strict=True):
            (held if hit else wanted).append(i)
        # Ask first, so the server works while we report and the writer links what we hold.
        self.receiver.request(wanted)
        linked = [entries[i] for i in held]
        if self.on_file is not None:
            # Before the links are queued: the writer's syscalls would make this loop and the
            # writer take turns for the GIL (measured: 3x slower together than one after the
            # other), and while we then wait for the server, the writer has it to itself.
            report = self.on_file
            for e in linked:
                report(e.name, e.size, e.mtime, None)
        else:
            self.listed = kept
            self.linked = set(held)
        if basis is not None:
            for start in range(0, len(linked), LINK_BATCH):
                chunk = linked[start : start + LINK_BATCH]
                self.writer.put(functools.partial(basis.link_many, chunk, self.dest))

    def store(self, event: FileReceived) -> None:
        e = self.entries[event.index]
        data = event.data
        self.writer.put(functools.partial(self.dest.write, e.name, data, e.mtime), len(data))
        self.fetched += 1
        if self.on_file is not None:
            self.on_file(e.name, len(data), e.mtime, hashlib.sha256(data).digest())

    def result(self) -> ModuleFetch:
        entries = self.entries
        files = tuple(
            ReceivedFile(entries[i].name, entries[i].size, entries[i].mtime, i not in self.linked)
            for i in self.listed
        )
        return ModuleFetch(
            files=files,
            directories=tuple(self.directories),
            skipped=self.skipped,
            protocol=self.receiver.protocol,
            bytes_received=self.receiver.bytes_received,
            files_fetched=self.fetched,
        )


def _pump(sock: socket.socket, fetch: _Fetch, limits: Limits, deadline: float) -> None:
    receiver = fetch.receiver
    io_timeout = float(limits.rsync_client_io_timeout)
    pending = bytearray()
    last_read = time.monotonic()
    eof = False
    poller = select.poll()  # not select(): the descriptor may be above FD_SETSIZE
    registered = 0
    write_closed = False
    while True:
        while True:
            event = receiver.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, FileReceived):
                fetch.store(event)
            elif isinstance(event, FileListReceived):
                fetch.plan(event)
            elif isinstance(event, ServerMessage):
                log.info("rsync server says: %s", event.text)
        pending += receiver.data_to_send()
        fetch.writer.check()
        if receiver.finished and not pending:
            return
        if eof:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "connection closed by the server"
            )
        now = time.monotonic()
        if now >= deadline:
            raise _timeout("the fetch deadline passed")
        if now - last_read >= io_timeout:
            raise _timeout(f"the server sent nothing for {io_timeout:.0f} s")
        wait = min(deadline - now, io_timeout - (now - last_read))
        if write_closed:
            pending.clear()
        want = select.POLLIN | (select.POLLOUT if pending else 0)
        if want != registered:
            poller.register(sock, want)  # (re-)registering modifies the mask
            registered = want
        try:
            ready = poller.poll(max(1, int(wait * 1000) + 1))
            flags = ready[0][1] if ready else 0
            if flags & select.POLLOUT:
                sent = sock.send(pending)
                del pending[:sent]
            if flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
                data = sock.recv(READ_SIZE)
                last_read = time.monotonic()
                if data:
                    receiver.receive_data(data)
                else:
                    eof = True
                    receiver.receive_data(b"")
        except (BlockingIOError, InterruptedError):
            continue
        except BrokenPipeError:
            # The server stopped reading; what it still says (or its end of file) tells why.
            pending.clear()
            write_closed = True
        except ConnectionResetError:
            # Like an end of file: the receiver knows whether that was expected, and what
            # the server said before it went.
            eof = True
            receiver.receive_data(b"")
        except OSError as exc:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, f"connection error: {exc}"
            ) from None


def _check_dest(dest: Path) -> None:
    try:
        if not dest.is_dir():
            raise StorageError(
                Reason.STORAGE_UNEXPECTED, "destination is not a directory", path=str(dest)
            )
        with os.scandir(dest) as it:
            empty = next(it, None) is None
        if not empty:
            raise StorageError(
                Reason.STORAGE_UNEXPECTED, "destination is not an empty directory", path=str(dest)
            )
    except OSError as exc:
        raise _storage(exc, "cannot read destination", str(dest)) from None


def fetch_module(
    uri: RsyncUri,
    dest: Path,
    *,
    basis: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    deadline: float | None = None,
    protocol: int = 31,
    compress: bool = False,
    include_extensions: tuple[str, ...] | None = None,
    min_size: int = 0,
    only_names: tuple[str, ...] | None = None,
    on_file: FileSink | None = None,
) -> ModuleFetch:
    """Fetch the directory ``uri`` names into the empty directory ``dest``; see the module
    docstring.  ``deadline`` is a :func:`time.monotonic` value (default: now +
    ``fetch_repository_deadline``); ``min_size`` skips smaller files (rpki-client: 100).
    ``only_names``: fetch just these files of the directory itself (a TA certificate), by
    anchored filter rules, and refuse anything else the server lists.  ``on_file``: told about
    every file instead of :attr:`ModuleFetch.files` (see :data:`FileSink`); a received file's
    SHA-256 is computed from the bytes in hand, so nobody needs to read the tree back."""
    if deadline is None:
        deadline = time.monotonic() + limits.fetch_repository_deadline
    extensions = _extensions(include_extensions)
    rules = include_rules(sorted(extensions), protocol) if extensions is not None else ()
    names = None
    if only_names is not None:
        if extensions is not None:
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "only_names and include_extensions together"
            )
        for name in only_names:
            if (
                not name
                or not name.isascii()
                or any(c in name for c in "/*?[]\\")
                or name in (".", "..")
            ):
                raise LocalProtocolError(
                    Reason.RSYNC_CLIENT_PROTOCOL, "only_names takes plain file names", name=name
                )
            check_name(name.encode("ascii"), limits, False)
        names = frozenset(only_names)
        exclude = b"- *" if protocol >= 29 else b"*"
        rules = (*(b"+ /" + n.encode("ascii") for n in sorted(names)), exclude)
    receiver = Receiver(
        uri.module,
        uri.path,
        protocol=protocol,
        compress=compress,
        filter_rules=rules,
        limits=limits,
        md4_digest=md4_digest(),
    )
    _check_dest(dest)
    out = _Tree(dest)
    base = None
    try:
        if basis is not None:
            try:
                base = _Tree(basis)
            except StorageError:
                log.info("rsync basis %s is not usable: fetching everything", basis)
        fetch = _Fetch(receiver, out, base, limits, extensions, min_size, names, on_file)
        try:
            sock = _connect(uri, limits, deadline)
            try:
                _pump(sock, fetch, limits, deadline)
            finally:
                sock.close()
            fetch.writer.finish()
        finally:
            fetch.writer.abort()
        result = fetch.result()
    except RpkiRepoError:
        raise
    except OSError as exc:  # pragma: no cover - every OSError above is mapped where it occurs
        raise _storage(exc, "unexpected I/O error", str(dest)) from None
    finally:
        out.close()
        if base is not None:
            base.close()
    log.debug(
        "rsync %s: %d files (%d fetched), %d skipped, %d bytes, protocol %d",
        uri,
        len(result.files),
        result.files_fetched,
        result.skipped,
        result.bytes_received,
        result.protocol,
    )
    return result


# --- the rsync program ----------------------------------------------------------------------


def _walk_checked(dest: Path, limits: Limits) -> tuple[dict[str, os.stat_result], list[str]]:
    """Every regular file (path -> lstat) and directory below ``dest``; anything else, or a
    name the native client would refuse, fails."""
    files: dict[str, os.stat_result] = {}
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(dest / rel if rel else dest) as it:
                children = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        except OSError as exc:
            raise _storage(exc, "cannot read what rsync wrote", rel) from None
        for name, st in children:
            path = f"{rel}/{name}" if rel else name
            is_dir = stat.S_ISDIR(st.st_mode)
            check_name(os.fsencode(path), limits, is_dir)
            if is_dir:
                dirs.append(path)
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                files[path] = st
            else:
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_BAD_NAME,
                    "rsync created something other than a file or directory",
                    name=path[:64],
                )
    return files, sorted(dirs)


def fetch_module_external(
    uri: RsyncUri,
    dest: Path,
    *,
    basis: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    deadline: float | None = None,
    rsync_binary: str = "rsync",
    include_extensions: tuple[str, ...] | None = None,
    min_size: int = 0,
    on_file: FileSink | None = None,
) -> ModuleFetch:
    """:func:`fetch_module` done by the ``rsync`` program; see the module docstring.  With
    ``on_file``, the files rsync wrote are read once to hash them (the linked ones are
    reported as links)."""
    if deadline is None:
        deadline = time.monotonic() + limits.fetch_repository_deadline
    extensions = _extensions(include_extensions)
    _check_dest(dest)
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout("deadline passed before starting rsync")
    source = uri.uri if uri.uri.endswith("/") else uri.uri + "/"
    argv = [
        rsync_binary,
        "-rt",
        "--no-motd",
        f"--contimeout={max(1, limits.rsync_client_connect_timeout)}",
        f"--timeout={max(1, limits.rsync_client_io_timeout)}",
        f"--max-size={limits.max_object_size}",
        "--out-format=%i %n",
        "--info=name2",
    ]
    if min_size > 0:
        argv.append(f"--min-size={min_size}")
    if extensions is not None:
        argv.append("--include=*/")
        argv += [f"--include=*.{ext}" for ext in sorted(extensions)]
        argv.append("--exclude=*")
    if basis is not None:
        argv.append(f"--compare-dest={basis.resolve()}")
    argv += ["--", source, f"{dest}/"]
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: rsync forks a receiver
        )
    except OSError as exc:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_EXTERNAL, f"cannot run {rsync_binary}: {exc}"
        ) from None
    try:
        stdout, err = child.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        raise _timeout("rsync did not finish before the deadline") from None
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
    proc = subprocess.CompletedProcess(argv, child.returncode, stdout, err)
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        reason = Reason.RSYNC_CLIENT_EXTERNAL
        if proc.returncode in (30, 35):  # rsync's RERR_TIMEOUT, RERR_CONTIMEOUT
            reason = Reason.RSYNC_CLIENT_TIMEOUT
        elif proc.returncode in (5, 10):  # RERR_STARTCLIENT, RERR_SOCKETIO
            reason = Reason.RSYNC_CLIENT_CONNECT
        raise RemoteProtocolError(
            reason,
            stderr[-EXTERNAL_STDERR_MAX:] or f"rsync exited {proc.returncode}",
            exit_code=proc.returncode,
        )
    # --info=name2 itemizes every listed file: ">f..." written, ".f..." equal to the basis
    # (so --compare-dest left it out of dest).
    order: list[tuple[str, bool]] = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        code, name = line[:11], line[12:]
        if len(code) == 11 and code[1] == "f" and code[0] in ".>":
            check_name(name.encode("utf-8", "surrogateescape"), limits, False)
            order.append((name, code[0] == ">"))
    if len(order) > limits.rsync_client_max_files:
        raise LimitExceeded(
            Reason.TOO_MANY_OBJECTS, "too many files", limit="rsync_client_max_files"
        )
    unchanged = [name for name, written in order if not written]
    if unchanged:
        if basis is None:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_EXTERNAL, "rsync skipped files without a basis"
            )
        out, base = _Tree(dest), _Tree(basis)
        try:
            for name in unchanged:
                st = _lstat(base, name)
                base.link_into(name, out, st.st_mtime_ns // 1_000_000_000)
        finally:
            out.close()
            base.close()
    files, dirs = _walk_checked(dest, limits)
    listed = {name for name, _ in order}
    stray = sorted(set(files) - listed)
    if stray:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_EXTERNAL, "rsync wrote files it did not report", name=stray[0]
        )
    received = []
    for name, written in order:
        found = files.get(name)
        if found is None:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_EXTERNAL, "a reported file is missing", name=name[:64]
            )
        mtime = found.st_mtime_ns // 1_000_000_000
        if on_file is None:
            received.append(ReceivedFile(name, found.st_size, mtime, written))
        elif written:
            data = _read_written(dest, name, found)
            on_file(name, len(data), mtime, hashlib.sha256(data).digest())
        else:
            on_file(name, found.st_size, mtime, None)
    return ModuleFetch(
        files=tuple(received),
        directories=tuple(dirs),
        skipped=(proc.stdout + proc.stderr).count(b"skipping non-regular file"),
        protocol=0,
        bytes_received=0,
        files_fetched=sum(1 for _, written in order if written),
    )


def _read_written(dest: Path, rel: str, st: os.stat_result) -> bytes:
    """The bytes of a file rsync wrote (``st``: its ``lstat`` from the check walk), read without
    following a symlink; it must still be that file."""
    try:
        fd = os.open(dest / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(fd)
            data = f.read()
    except OSError as exc:
        raise _storage(exc, "cannot read what rsync wrote", rel) from None
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev) or len(data) != st.st_size:
        raise StorageError(
            Reason.STORAGE_UNEXPECTED, "a file changed under the fetch", path=rel[:200]
        )
    return data


def _lstat(tree: _Tree, rel: str) -> os.stat_result:
    parent, _, base = rel.rpartition("/")
    try:
        st = os.stat(base, dir_fd=tree.dir_fd(parent), follow_symlinks=False)
    except OSError as exc:
        raise _storage(exc, "cannot read basis file", rel) from None
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(Reason.STORAGE_UNEXPECTED, "basis entry is not a file", path=rel[:200])
    return st
