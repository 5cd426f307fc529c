"""What publish and sync both do to the files clients see: the notification write, the choice of
the rsync tree to bring forward, and garbage collection after the grace period.

Both keep their state in :class:`~rpkirepo.publish.state.State` (retired RRDP files, rsync tree
slots, the change log) and lay out their outputs alike (``RRDP_DIR/<paths>``,
``RSYNC_DIR/revisions/<tree>`` behind ``current``), so one implementation serves both.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import time
import zlib
from pathlib import Path

from rpkirepo.errors import Reason
from rpkirepo.fsutil import TMP_PREFIX, atomic_write, remove_tree
from rpkirepo.publish.rsync_tree import TreeWriter, reuse_tree
from rpkirepo.publish.snapshot import gzip_bytes
from rpkirepo.publish.state import SlotRow, State

__all__ = [
    "collect_garbage",
    "pick_tree",
    "prune_empty_dirs",
    "prune_upwards",
    "write_notification",
]

log = logging.getLogger("rpkirepo.served")


def write_notification(
    path: Path, data: bytes, gzip_level: int, *, only_if_different: bool = False
) -> None:
    """Write the notification (and its ``.gz`` sibling first) atomically and durably.

    HTTP servers derive Last-Modified from the file mtime, and relying parties send
    If-Modified-Since: two serials written within one second must not share an mtime, or the
    newer one is answered 304 Not Modified.  So the mtime strictly increases.
    ``only_if_different``: recovery, which rewrites only a notification that does not match.
    """
    if only_if_different:
        try:
            gz = path.with_name(path.name + ".gz").read_bytes()
            if path.read_bytes() == data and gzip.decompress(gz) == data:
                return
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error):
            pass  # missing, unreadable or stale: rewritten below
        log.warning(
            "notification did not match the state; rewritten",
            extra={"reason": Reason.STATE_OUTPUT_MISMATCH},
        )
    try:
        previous = int(os.stat(path).st_mtime)
    except OSError:
        previous = 0
    mtime = max(int(time.time()), previous + 1)
    atomic_write(path.with_name(path.name + ".gz"), gzip_bytes(data, gzip_level), mtime=mtime)
    atomic_write(path, data, mtime=mtime)


def pick_tree(
    state: State,
    revisions: Path,
    prefix: str,
    link_source: Path | None,
    *,
    now: float,
    grace: float,
    max_revisions: int,
) -> tuple[TreeWriter, int]:
    """A tree to bring to the new revision, and the serial it holds (-1: a new tree).

    An expired tree of the ring (newest first) is taken out of service; with none expired but
    ``max_revisions`` trees alive, the oldest is reused before its grace ends (logged); else a
    new tree, whose files will be linked from ``link_source``.  Trees marked serial 0 belong to
    another history and are never reused.
    """
    if link_source is None:
        return TreeWriter.new_tree(revisions, prefix, None), -1
    slots = [s for s in state.slots() if s.retired_at is not None and s.serial > 0]
    deadline = now - grace
    expired = [s for s in slots if s.retired_at is not None and s.retired_at <= deadline]
    choice: SlotRow | None = None
    if expired:
        choice = max(expired, key=lambda s: s.serial)
    elif slots and len(slots) + 1 >= max_revisions:
        choice = min(slots, key=lambda s: s.serial)
        log.warning(
            "rsync tree %s reused before its grace period ended",
            choice.name,
            extra={"reason": "rsync-grace-shortened"},
        )
    if choice is None:
        return TreeWriter.new_tree(revisions, prefix, link_source), -1
    tree = reuse_tree(revisions, choice.name, prefix, link_source)
    state.begin()
    state.drop_slot(choice.name)
    state.commit()
    return tree, choice.serial


def collect_garbage(state: State, rrdp_dir: Path, revisions: Path, deadline: float) -> None:
    """Remove RRDP files and trees that stopped being referenced before ``deadline``.

    The newest expired tree of the current history is kept for the next run to reuse; a tree is
    renamed out of service before it is removed, so a crash mid-removal never leaves a half tree
    under a name the state lists.  The change log is pruned to what the remaining trees need.
    """
    retired = state.retired()
    free = [s for s in state.slots() if s.retired_at is not None and s.retired_at <= deadline]
    free.sort(key=lambda s: s.serial)
    reusable = [s for s in free if s.serial > 0][-1:]
    doomed_slots = [s for s in free if s not in reusable]
    if not any(when <= deadline for when in retired.values()) and not doomed_slots:
        return  # nothing to collect: no transaction, no fsync
    state.begin()
    try:
        for rel, when in retired.items():
            if when <= deadline:
                path = rrdp_dir / rel
                path.unlink(missing_ok=True)
                state.forget_retired(rel)
                prune_upwards(path.parent, rrdp_dir)
        for s in doomed_slots:
            doomed = revisions / f"{TMP_PREFIX}gc-{s.name}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(revisions / s.name, doomed)
            remove_tree(doomed)
            state.drop_slot(s.name)
        live = [s.serial for s in state.slots() if s.serial > 0]
        if live:
            state.prune_changes(min(live))
        state.commit()
    except BaseException:
        state.rollback()
        raise


def prune_upwards(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents while empty, never ``stop`` or above."""
    while directory != stop and stop in directory.parents:
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = directory.parent


def prune_empty_dirs(root: Path) -> None:
    """Remove every empty directory below ``root`` (deepest first)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        if not dirnames and not filenames and Path(dirpath) != root:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
