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
import fcntl
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, NoReturn

from rpkirepo.errors import Reason, StorageError
from rpkirepo.fsutil import TMP_PREFIX, write_all
from rpkirepo.limits import Limits
from rpkirepo.objects import mtime_of
from rpkirepo.publish._tree_child import HEADER, link_file, make_dir

__all__ = ["DIR_MTIME", "BackgroundTree", "MtimeRule", "TreeWriter", "slot_name"]

#: Constant directory mtime (any constant will do, BCP §rsync): 2000-01-01T00:00:00Z.
DIR_MTIME: Final = 946684800

_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW

#: BackgroundTree's helper, a script run by path; the directory holding the package, for its
#: imports (the mtime rule).
_CHILD: Final = os.fspath(Path(__file__).with_name("_tree_child.py"))
_PACKAGE_ROOT: Final = os.fspath(Path(__file__).resolve().parents[2])
#: os.fsencode's arguments, for the paths framed to it (without fsencode's per-call checks).
_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()
#: Frames are sent to the helper in writes of about this size; also its pipe's capacity.
_FLUSH_BYTES: Final = 1 << 20
#: What a frame counts toward ``_FLUSH_BYTES`` besides its path and data: its header, and the
#: objects that hold its pieces until they are written (a chunk of links, small frames, stays
#: about 1 MiB of memory in the queue too).
_FRAME_COST: Final = HEADER.size + 96
#: Buffers one writev takes (Linux: 1024).
_IOV_MAX: Final = max(16, os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16)
_F_SETPIPE_SZ: Final = 1031
#: Operations a BackgroundTree holds before it starts its helper (fewer: done in-process).
SPAWN_AFTER = 512
#: Chunks (of about ``_FLUSH_BYTES``) queued for the feeder thread before the producer waits.
_QUEUED_CHUNKS: Final = 16


def slot_name(session_id: str, serial: int) -> str:
    return f"{session_id[:8]}-{serial}"


@dataclass(frozen=True)
class MtimeRule:
    """RFC 9589's file time for an object, ``now`` for one without a usable time (with the
    reason).  Applied by :meth:`BackgroundTree.write_timed`, in its helper when one runs."""

    now: int
    limits: Limits

    def __call__(self, data: bytes, name: str) -> tuple[int, str | None]:
        t = mtime_of(data, name, limits=self.limits)
        if t.seconds >= 0:
            return t.seconds, None
        return self.now, str(t.reason or Reason.OBJECT_MALFORMED)


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
        full, new_dir = self.plan_parent(relpath)
        if new_dir is not None:
            make_dir(os.path.join(self.root, new_dir))
        return full

    def plan_parent(self, relpath: str) -> tuple[str, str | None]:
        """The path of ``relpath`` in the tree, and its parent directory when that must be made
        first (recorded as made, with every ancestor, so their mtimes are reset too)."""
        full = self.prefix + relpath
        parent = full.rpartition("/")[0]
        new_dir = None
        if parent not in self._dirs:
            new_dir = parent
            self.touched_dirs.add("")
            parts = parent.split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                self._dirs.add(d)
                self.touched_dirs.add(d)
        self.touched_dirs.add(parent)
        return full, new_dir

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
        link_file(src, dst)

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


def perform(tree: TreeWriter, rule: MtimeRule | None, op: str, relpath: str, data: bytes,
            mtime: int, times: array[int], fallbacks: list[tuple[int, str]]) -> None:  # fmt: skip
    """One :class:`BackgroundTree` operation (``w`` write, ``t`` write with ``rule``'s mtime,
    appended to ``times``, ``l`` link) in this process: the few it holds, at
    :meth:`BackgroundTree.close`.  Its helper does the same (``_tree_child.py``)."""
    if op == "t":
        if rule is None:
            raise StorageError(Reason.STORAGE_UNEXPECTED, "no mtime rule given", path=relpath)
        mtime, reason = rule(data, relpath)
        if reason is not None:
            fallbacks.append((len(times), reason))
        times.append(mtime)
        tree.write(relpath, data, mtime)
    elif op == "w":
        tree.write(relpath, data, mtime)
    elif op == "l":
        tree.link(relpath)
    else:
        raise StorageError(Reason.STORAGE_UNEXPECTED, "unknown operation", path=relpath)


class BackgroundTree:
    """Runs a :class:`TreeWriter`'s writes and links in a helper process.

    Creating a file costs this kind of machine ~100-200 µs of kernel time, and parsing, hashing
    and the mtime rule are Python work of about the same size.  A writer *thread* beside the
    parser was tried first: every syscall of it hands the GIL back and waits for it again, so
    the two mostly took turns on one core.  A helper process (``_tree_child.py``) performs the
    operations on the other core, with the syscalls TreeWriter makes (:func:`perform`, as this
    side does for the few it keeps); this side keeps the bookkeeping (the tree's directories,
    touched directories and counts) and streams it framed operations through a pipe, each
    saying whether its directory is new (so the helper plans nothing).  A feeder thread does
    the pipe writes (a writev of the frames' pieces per MiB) from a bounded queue, so a burst
    of operations (a batch of 2,000 objects is ~5 MB) does not make the parser wait for the
    helper to catch up; at most ``_QUEUED_CHUNKS`` MiB are in flight.

    A few operations are not worth a process: until ``spawn_after`` operations (or
    ``spawn_bytes``) are queued nothing is started, and :meth:`close` performs what it holds
    in this process.  Errors are raised by the next call that finds the helper gone, or by
    :meth:`close`; :meth:`abort` stops the helper without finishing.
    """

    def __init__(self, tree: TreeWriter, *, rule: MtimeRule | None = None,
                 spawn_after: int | None = None, spawn_bytes: int = 1 << 22) -> None:  # fmt: skip
        self.tree = tree
        self.rule = rule
        #: After :meth:`close`: the mtime :meth:`write_timed` gave each object, in call order,
        #: and (index, reason) for those that got ``rule.now``.
        self.times = array("q")
        self.fallbacks: list[tuple[int, str]] = []
        self._timed = 0
        self._held: list[tuple[bytes, str, bytes, int]] = []
        self._held_bytes = 0
        self._spawn_after = SPAWN_AFTER if spawn_after is None else spawn_after
        self._spawn_bytes = spawn_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._frames: list[bytes] = []
        self._frame_bytes = 0
        self._closed = False
        #: Frames, each as pieces (header, path, data), handed whole to the feeder thread.
        self._chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._feeder: threading.Thread | None = None
        self._feed_failed = False

    # ------------------------------------------------------------------ queueing

    def write(self, relpath: str, data: bytes, mtime: int) -> None:
        self._queue(b"w", relpath, data, mtime)

    def write_timed(self, relpath: str, data: bytes) -> int:
        """Like :meth:`write`, with the mtime by ``rule`` (RFC 9589), found where the file is
        written.  Returns the index of its mtime in :attr:`times` (filled by :meth:`close`)."""
        if self.rule is None:
            raise StorageError(Reason.STORAGE_UNEXPECTED, "no mtime rule given", path=relpath)
        self._queue(b"t", relpath, data, 0)
        self._timed += 1
        return self._timed - 1

    def link(self, relpath: str) -> None:
        if self.tree.link_source is None:
            raise StorageError(Reason.STORAGE_UNEXPECTED, "no tree to link from", path=relpath)
        self._queue(b"l", relpath, b"", 0)

    def _queue(self, op: bytes, relpath: str, data: bytes, mtime: int) -> None:
        """Hold the operation until the helper runs, or frame it for the helper (the bookkeeping
        done here: the frame says whether the helper must make the file's directory)."""
        if self._closed:
            raise StorageError(Reason.STORAGE_UNEXPECTED, "tree writer already closed")
        if self._proc is None:
            self._held.append((op, relpath, data, mtime))
            self._held_bytes += len(data)
            if len(self._held) >= self._spawn_after or self._held_bytes >= self._spawn_bytes:
                self._spawn()
            return
        tree = self.tree
        full, new_dir = tree.plan_parent(relpath)
        raw = full.encode(_FS_ENCODING, _FS_ERRORS)
        header = HEADER.pack(op, new_dir is not None, len(raw), len(data), mtime)
        self._frames += (header, raw, data)  # (the feeder writes the pieces, never joined)
        size = self._frame_bytes + _FRAME_COST + len(raw) + len(data)
        self._frame_bytes = size
        if op != b"l":
            tree.files_written += 1
        if size >= _FLUSH_BYTES:
            self._flush()

    # ------------------------------------------------------------------ the helper

    def _spawn(self) -> None:
        tree = self.tree
        link_source = "" if tree.link_source is None else os.fspath(tree.link_source)
        # -P: the script's directory is not put on sys.path (its module names could shadow).
        argv = [sys.executable, "-P", _CHILD, os.fspath(tree.root), link_source,
                "1" if tree.fresh else "0", str(os.getpid())]  # fmt: skip
        if self.rule is not None:
            argv += [str(self.rule.now), json.dumps(asdict(self.rule.limits))]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env
            )
        except OSError as exc:
            raise StorageError(
                Reason.STORAGE_IO, f"cannot start the tree writer: {exc.strerror}"
            ) from exc
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # a larger pipe: fewer wake-ups on both sides
            fcntl.fcntl(self._proc.stdin.fileno(), _F_SETPIPE_SZ, _FLUSH_BYTES)
        self._feeder = threading.Thread(
            target=self._feed, args=(self._proc.stdin.fileno(),), name="tree-feeder", daemon=True
        )
        self._feeder.start()
        held, self._held, self._held_bytes = self._held, [], 0
        for item in held:
            self._queue(*item)  # (framed now: the helper runs)

    def _feed(self, fd: int) -> None:
        while (pieces := self._chunks.get()) is not None:
            if self._feed_failed:
                continue  # drain until the end marker
            try:
                # The frames' pieces as they are (no copy into one buffer on this side), at
                # most IOV_MAX a call; a short write (a signal) finishes with write_all.
                for i in range(0, len(pieces), _IOV_MAX):
                    group = pieces[i : i + _IOV_MAX]
                    done = os.writev(fd, group)
                    if done != sum(map(len, group)):
                        write_all(fd, b"".join(group)[done:])
            except OSError:  # the helper stopped: close() or the next flush says why
                self._feed_failed = True

    def _flush(self) -> None:
        if self._feed_failed:
            self._stop_feeder()
            self._fail()
        pieces, self._frames = self._frames, []
        self._frame_bytes = 0
        self._chunks.put(pieces)

    def _stop_feeder(self) -> None:
        if self._feeder is not None:
            self._chunks.put(None)
            self._feeder.join()
            self._feeder = None

    def _fail(self, answer: bytes | None = None) -> NoReturn:
        """Raise the error the helper answered (``err ...``) or that it stopped; it is reaped
        first."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        if answer is None:
            answer = proc.stdout.read(1 << 16)
        self._reap(kill=True)
        fields = answer.split()
        if len(fields) == 2 and fields[0] == b"err":
            try:
                said = json.loads(bytes.fromhex(fields[1].decode()))
                error = StorageError(Reason(said["reason"]), str(said["detail"]), **said["context"])
            except (ValueError, KeyError, TypeError):
                pass
            else:
                raise error
        raise StorageError(Reason.STORAGE_IO, "the tree writer stopped", status=proc.returncode)

    def _reap(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if kill and proc.poll() is None:
            proc.kill()
        self._stop_feeder()  # before its pipe is closed (a feeder writing gets EPIPE, drains)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """Perform or wait for every queued operation; raise the first error."""
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            held, self._held = self._held, []
            for op, relpath, data, mtime in held:
                perform(self.tree, self.rule, op.decode(), relpath, data, mtime,
                        self.times, self.fallbacks)  # fmt: skip
            return
        proc = self._proc
        assert proc.stdout is not None
        self._frames.append(HEADER.pack(b"e", False, 0, 0, 0))
        self._flush()
        self._stop_feeder()
        answer = proc.stdout.readline()
        fields = answer.split()
        if len(fields) != 3 or fields[0] != b"ok":
            self._fail(answer)
        count, fallbacks = int(fields[1]), int(fields[2])
        raw = proc.stdout.read(8 * count)
        lines = [proc.stdout.readline().split() for _ in range(fallbacks)]
        if len(raw) != 8 * count or any(len(line) != 2 for line in lines):
            self._fail(b"")
        self.times.frombytes(raw)
        if sys.byteorder != "little":
            self.times.byteswap()
        self.fallbacks = [(int(i), r.decode()) for i, r in lines]
        self._reap(kill=False)

    def abort(self) -> None:
        """Stop without finishing (the caller is about to remove the tree)."""
        self._closed = True
        self._held.clear()
        self._frames.clear()
        self._reap(kill=True)
