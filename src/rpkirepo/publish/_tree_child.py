"""The file-creating half of :class:`~rpkirepo.publish.rsync_tree.BackgroundTree`.

Run by path (``python -I -S _tree_child.py ROOT LINK_SOURCE FRESH``), so it imports the standard
library only.  It reads frames from stdin and performs them in order under ``ROOT``:

    header  struct "<cIIq": op, path length, data length, mtime
    op b"d" makedirs PATH (mode 0755)
    op b"w" create PATH (never overwrites; unlinked first unless FRESH), write DATA, set mtime
    op b"l" hard-link LINK_SOURCE/PATH to ROOT/PATH (a copy when the inode has too many links)
    op b"e" end: answer ``ok`` on stdout and exit 0

On the first failure it answers ``err ERRNO OP PATH-HEX`` and exits 1; on end of input without
``e`` (the parent died or gave up) it exits 2 at once.  The parent does every piece of
bookkeeping (which directories exist, which were touched); this process only makes syscalls, so
they run on another core than the parent's parsing instead of contending for its GIL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import sys

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


def main(argv: list[str]) -> int:
    root, link_source, fresh = os.fsencode(argv[1]), os.fsencode(argv[2]), argv[3] == "1"
    _die_with_parent(int(argv[4]))
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
                os.write(1, b"ok\n")
                return 0
            try:
                _apply(op, path, buf[pos + size + plen : stop], mtime, root, link_source, fresh)
            except OSError as exc:
                code = exc.errno if exc.errno is not None else errno.EIO
                os.write(1, b"err %d %s %s\n" % (code, op, path.hex().encode()))
                return 1
            pos = stop
        buf = buf[pos:]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
