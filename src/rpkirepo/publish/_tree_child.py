"""The file-creating half of :class:`~rpkirepo.publish.rsync_tree.BackgroundTree`.

Run as ``python -P _tree_child.py ROOT LINK_SOURCE FRESH PARENT_PID [NOW LIMITS_JSON]`` with the
package importable.  It performs, in order, the operations framed on its stdin, on the tree at
``ROOT`` (paths relative to ``ROOT``), as :class:`~rpkirepo.publish.rsync_tree.TreeWriter`
would in-process (FRESH ``1``: a fresh tree, nothing to unlink before a create):

    header  :data:`HEADER` (struct "<c?IIq"): op, whether the path's directory must be made
            first, path length, data length, mtime; then the path and the data
    op b"w", b"t", b"l"  write; write with the mtime by RFC 9589's rule
            (``rsync_tree.MtimeRule``, NOW for an object without a usable time), the mtimes sent
            back at the end, in order; hard-link from LINK_SOURCE
    op b"e" end: answer ``ok T F``, then T mtimes (int64, little-endian) and F lines
            ``INDEX REASON`` naming the objects that got NOW; exit 0

On the first failure it answers ``err HEX`` (the error's reason, detail and context as JSON, as
TreeWriter would raise it) and exits 1; on end of input without ``e`` (the parent died or gave
up) it exits 2 at once.  The parent keeps the bookkeeping of its own TreeWriter (directories
touched and made, files written) and says which directories are new; this process makes the
syscalls and runs the mtime rule, on another core than the parent's parsing.

Paths stay bytes here, from the pipe to the syscalls.  The process imports no more than the
rule needs (not ``rpkirepo.publish``, whose ``__init__`` brings in the whole publisher), and
``rsync_tree`` takes :data:`HEADER` and :func:`make_dir` from this module.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import sys
from array import array
from typing import Final

#: A frame's header: op, make the path's directory first, path length, data length, mtime.
HEADER: Final = struct.Struct("<c?IIq")
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
#: The read buffer's initial size (the parent's pipe holds 1 MiB); it grows for a larger frame.
_BUFFER: Final = 2 << 20


def make_dir(path: str | bytes) -> None:
    """Make a directory that the tree's bookkeeping says is new (mode 0755), and any missing
    ancestor: ``os.makedirs(path, 0o755, exist_ok=True)``, with one ``mkdir`` in the common case
    of an existing parent (makedirs also stats it first).  Any failure of that mkdir (an
    ancestor missing too, the name taken) is left to makedirs, which also raises as it did."""
    try:
        os.mkdir(path, 0o755)
    except OSError:
        os.makedirs(path, 0o755, exist_ok=True)


def link_file(src: str | bytes, dst: str | bytes) -> None:
    """Hard-link ``src`` at ``dst`` (same inode, same mtime); copy it when the inode has too
    many links (identical content in very many places).  Other failures: ``STORAGE_IO``."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.EMLINK:
            from rpkirepo.errors import Reason, StorageError

            path = os.fsdecode(src)
            raise StorageError(Reason.STORAGE_IO, str(exc.strerror), path=path) from exc
        import shutil

        shutil.copy2(os.fsdecode(src), os.fsdecode(dst), follow_symlinks=False)


def _die_with_parent(parent: int) -> None:
    """Linux: be killed when the parent dies (a kill -9 of a run must not leave us writing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # died before the prctl took effect
        os._exit(2)


def _write_all(fd: int, data: bytes | memoryview, done: int = 0) -> None:
    view = memoryview(data)[done:]
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    # Ctrl-C on a terminal reaches the whole process group: the parent decides (it stops us,
    # or lets us finish), so no second traceback is printed from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(argv[4]))

    from rpkirepo.errors import Reason, RpkiRepoError, StorageError
    from rpkirepo.limits import Limits
    from rpkirepo.objects import mtime_of

    # os.fsencode / os.fsdecode, without their per-call checks.
    enc, errs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    # The paths TreeWriter would make: os.path.join(ROOT, path), os.path.join(LINK_SOURCE, path).
    root = os.path.join(argv[1], "").encode(enc, errs)
    link_root = os.path.join(argv[2], "").encode(enc, errs) if argv[2] else None
    fresh = argv[3] == "1"
    now, limits = (int(argv[5]), Limits(**json.loads(argv[6]))) if len(argv) > 6 else (0, None)
    malformed = str(Reason.OBJECT_MALFORMED)
    times = array("q")
    fallbacks: list[tuple[int, str]] = []
    # Hot names as locals.
    unpack, size = HEADER.unpack_from, HEADER.size
    os_open, os_write, os_utime, os_close, os_unlink = (
        os.open, os.write, os.utime, os.close, os.unlink
    )  # fmt: skip

    def prepare(path: bytes, new_dir: bool) -> None:
        """Before a create or link: the directory made when new, an old file of that name gone
        (a reused tree)."""
        if new_dir:
            make_dir(path.rpartition(b"/")[0])
        if not fresh:
            try:  # noqa: SIM105 - per file: cheaper than contextlib.suppress
                os_unlink(path)
            except FileNotFoundError:
                pass

    # Frames are read into one buffer and used in place: ``pos`` is where the next frame
    # starts, ``end`` where the bytes read end, ``need`` how many bytes from ``pos`` the next
    # frame needs before it can be taken (its header, then the whole frame).
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    pos = end = 0
    need = size
    while True:
        # Move the partial frame at ``pos`` to the front (into a larger buffer if it is larger
        # than this one), then read what the pipe holds after it.
        rest = end - pos
        if need > len(buf):
            buf = bytearray(need + _BUFFER)
            buf[:rest] = view[pos:end]
            view = memoryview(buf)
        elif pos:
            view[:rest] = view[pos:end]
        pos, end = 0, rest
        n = os.readv(0, [view[end:]])
        if not n:
            return 2
        end += n
        while True:
            if end - pos < size:
                need = size
                break
            op, new_dir, plen, dlen, mtime = unpack(buf, pos)
            p = pos + size
            d = p + plen
            stop = d + dlen
            if stop > end:
                need = stop - pos
                break
            path = root + view[p:d]
            try:
                if op == b"t":
                    if limits is None:
                        raise StorageError(
                            Reason.STORAGE_UNEXPECTED,
                            "no mtime rule given",
                            path=str(view[p:d], enc, errs),
                        )
                    # MtimeRule's: the object's time, or NOW with the reason.
                    obj = view[d:stop].tobytes()  # (the rule reads bytes)
                    t = mtime_of(obj, str(view[p:d], enc, errs), limits=limits)
                    if t.seconds >= 0:
                        mtime = t.seconds
                    else:
                        mtime = now
                        fallbacks.append((len(times), str(t.reason or malformed)))
                    times.append(mtime)
                    data: bytes | memoryview = obj
                elif op == b"w":
                    data = view[d:stop]  # (written from the buffer, not copied)
                elif op == b"l":
                    # TreeWriter.link
                    if link_root is None:
                        raise StorageError(
                            Reason.STORAGE_UNEXPECTED,
                            "no tree to link from",
                            path=str(view[p:d], enc, errs),
                        )
                    prepare(path, new_dir)
                    link_file(link_root + view[p:d], path)
                    pos = stop
                    continue
                elif op == b"e":
                    if sys.byteorder != "little":
                        times.byteswap()
                    os.write(1, b"ok %d %d\n" % (len(times), len(fallbacks)))
                    lines = b"".join(b"%d %s\n" % (i, r.encode()) for i, r in fallbacks)
                    _write_all(1, times.tobytes() + lines)
                    return 0
                else:
                    raise StorageError(
                        Reason.STORAGE_UNEXPECTED,
                        "unknown operation",
                        path=str(view[p:d], enc, errs),
                    )
                # TreeWriter.write: a new file (never overwritten) with its mtime.
                prepare(path, new_dir)
                try:
                    fd = os_open(path, _CREATE, 0o644)
                    try:
                        written = os_write(fd, data)
                        if written != dlen:
                            _write_all(fd, data, written)
                        os_utime(fd, (mtime, mtime))
                    finally:
                        os_close(fd)
                except OSError as exc:
                    raise StorageError(
                        Reason.STORAGE_IO, str(exc.strerror), path=path.decode(enc, errs)
                    ) from exc
            except RpkiRepoError as exc:
                said = {"reason": exc.reason.value, "detail": exc.detail, "context": exc.context}
            except OSError as exc:  # (making a directory, unlinking, copying)
                said = {
                    "reason": Reason.STORAGE_IO.value,
                    "detail": exc.strerror or str(exc),
                    "context": {"path": str(view[p:d], enc, errs)},
                }
            else:
                pos = stop
                continue
            os.write(1, b"err %s\n" % json.dumps(said).encode().hex().encode())
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
