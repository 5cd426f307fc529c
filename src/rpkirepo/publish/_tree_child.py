"""The file-creating half of :class:`~rpkirepo.publish.rsync_tree.BackgroundTree`.

Run as ``python -P _tree_child.py ROOT LINK_SOURCE FRESH PARENT_PID [NOW LIMITS_JSON]`` with the
package importable.  It performs, in order, the operations framed on its stdin with a
:class:`~rpkirepo.publish.rsync_tree.TreeWriter` of its own on ``ROOT`` (the same code that
writes a tree in-process, paths relative to ``ROOT``):

    header  ``rsync_tree._HEADER`` (struct "<cIIq"): op, path length, data length, mtime
    op b"w", b"t", b"l"  ``rsync_tree.perform``: write; write with the mtime by RFC 9589's rule
            (:class:`MtimeRule`, NOW for an object without a usable time), the mtimes sent back
            at the end, in order; hard-link from LINK_SOURCE
    op b"e" end: answer ``ok T F``, then T mtimes (int64, little-endian) and F lines
            ``INDEX REASON`` naming the objects that got NOW; exit 0

On the first failure it answers ``err HEX`` (the error's reason, detail and context as JSON) and
exits 1; on end of input without ``e`` (the parent died or gave up) it exits 2 at once.  The
parent keeps the bookkeeping of its own TreeWriter (directories touched, files written); this
process makes the syscalls and runs the mtime rule, on another core than the parent's parsing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from array import array
from pathlib import Path

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    # Ctrl-C on a terminal reaches the whole process group: the parent decides (it stops us,
    # or lets us finish), so no second traceback is printed from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(argv[4]))

    from rpkirepo.errors import Reason, RpkiRepoError
    from rpkirepo.limits import Limits
    from rpkirepo.publish.rsync_tree import _HEADER, MtimeRule, TreeWriter, perform

    tree = TreeWriter(Path(argv[1]), "", Path(argv[2]) if argv[2] else None, fresh=argv[3] == "1")
    rule = MtimeRule(int(argv[5]), Limits(**json.loads(argv[6]))) if len(argv) > 6 else None
    times = array("q")
    fallbacks: list[tuple[int, str]] = []
    buf = b""
    size = _HEADER.size
    while True:
        chunk = os.read(0, _READ)
        if not chunk:
            return 2
        buf = buf + chunk if buf else chunk
        pos, end = 0, len(buf)
        while end - pos >= size:
            op, plen, dlen, mtime = _HEADER.unpack_from(buf, pos)
            stop = pos + size + plen + dlen
            if stop > end:
                break
            path = os.fsdecode(buf[pos + size : pos + size + plen])
            if op == b"e":
                if sys.byteorder != "little":
                    times.byteswap()
                os.write(1, b"ok %d %d\n" % (len(times), len(fallbacks)))
                lines = b"".join(b"%d %s\n" % (i, r.encode()) for i, r in fallbacks)
                _write_all(1, times.tobytes() + lines)
                return 0
            data = buf[pos + size + plen : stop]
            try:
                perform(tree, rule, op.decode("latin-1"), path, data, mtime, times, fallbacks)
            except RpkiRepoError as exc:
                said = {"reason": exc.reason.value, "detail": exc.detail, "context": exc.context}
            except OSError as exc:  # (making a parent directory)
                said = {
                    "reason": Reason.STORAGE_IO.value,
                    "detail": exc.strerror or str(exc),
                    "context": {"path": path},
                }
            else:
                pos = stop
                continue
            os.write(1, b"err %s\n" % json.dumps(said).encode().hex().encode())
            return 1
        buf = buf[pos:]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
