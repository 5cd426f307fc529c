"""The file-creating half of :class:`~rpkirepo.publish.rsync_tree.BackgroundTree`.

Run as ``python _tree_child.py ROOT LINK_SOURCE FRESH PARENT_PID [NOW LIMITS_JSON]``.  It reads
frames from stdin and performs them in order under ``ROOT``:

    header  struct "<cIIq": op, path length, data length, mtime
    op b"d" makedirs PATH (mode 0755)
    op b"w" create PATH (never overwrites; unlinked first unless FRESH), write DATA, set mtime
    op b"t" the same, with the mtime found by RFC 9589's rule (``mtime_of``; NOW when the
            object has no usable time); the mtimes are sent back at the end, in order
    op b"l" hard-link LINK_SOURCE/PATH to ROOT/PATH (a copy when the inode has too many links)
    op b"e" end: answer ``ok T F``, then T mtimes (int64, little-endian) and F lines
            ``INDEX REASON`` naming the objects that got NOW; exit 0

On the first failure it answers ``err ERRNO OP PATH-HEX`` and exits 1; on end of input without
``e`` (the parent died or gave up) it exits 2 at once.  The parent does every piece of
bookkeeping (which directories exist, which were touched); this process makes the syscalls and
runs the mtime rule, on another core than the parent's parsing.  Only ``t`` needs the project's
object reader, imported on first use; everything else is the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import struct
import sys
from array import array
from collections.abc import Callable

HEADER = struct.Struct("<cIIq")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_READ = 1 << 20


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


def _apply(op: bytes, path: bytes, data: bytes, mtime: int, root: bytes, link_source: bytes,
           fresh: bool) -> None:  # fmt: skip
    target = root + b"/" + path
    if op == b"d":
        os.makedirs(target, mode=0o755, exist_ok=True)
    elif op == b"w":
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        fd = os.open(target, _CREATE, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    elif op == b"l":
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        src = link_source + b"/" + path
        try:
            os.link(src, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            shutil.copy2(src, target, follow_symlinks=False)
    else:
        raise OSError(errno.EINVAL, "unknown operation")


def _mtime_rule(now: int, limits_json: str) -> Callable[[bytes, str], tuple[int, str | None]]:
    """The parent's :class:`~rpkirepo.publish.rsync_tree.MtimeRule` (imported on first use)."""
    from rpkirepo.limits import Limits
    from rpkirepo.publish.rsync_tree import MtimeRule

    return MtimeRule(now, Limits(**json.loads(limits_json)))


def main(argv: list[str]) -> int:
    root, link_source, fresh = os.fsencode(argv[1]), os.fsencode(argv[2]), argv[3] == "1"
    # Ctrl-C on a terminal reaches the whole process group: the parent decides (it stops us,
    # or lets us finish), so no second traceback is printed from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(argv[4]))
    now, limits_json = (int(argv[5]), argv[6]) if len(argv) > 6 else (0, "")
    rule: Callable[[bytes, str], tuple[int, str | None]] | None = None
    times = array("q")
    fallbacks: list[bytes] = []
    buf = b""
    size = HEADER.size
    while True:
        chunk = os.read(0, _READ)
        if not chunk:
            return 2
        buf = buf + chunk if buf else chunk
        pos, end = 0, len(buf)
        while end - pos >= size:
            op, plen, dlen, mtime = HEADER.unpack_from(buf, pos)
            stop = pos + size + plen + dlen
            if stop > end:
                break
            path = buf[pos + size : pos + size + plen]
            if op == b"e":
                if sys.byteorder != "little":
                    times.byteswap()
                tail = b"".join(fallbacks)
                os.write(1, b"ok %d %d\n" % (len(times), len(fallbacks)))
                _write_all(1, times.tobytes() + tail)
                return 0
            data = buf[pos + size + plen : stop]
            if op == b"t":
                if rule is None:
                    if not limits_json:
                        os.write(1, b"err %d t %s\n" % (errno.EINVAL, path.hex().encode()))
                        return 1
                    rule = _mtime_rule(now, limits_json)
                mtime, reason = rule(data, os.fsdecode(path))
                if reason is not None:
                    fallbacks.append(b"%d %s\n" % (len(times), reason.encode()))
                times.append(mtime)
                op = b"w"
            try:
                _apply(op, path, data, mtime, root, link_source, fresh)
            except OSError as exc:
                code = exc.errno if exc.errno is not None else errno.EIO
                os.write(1, b"err %d %s %s\n" % (code, op, path.hex().encode()))
                return 1
            pos = stop
        buf = buf[pos:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
