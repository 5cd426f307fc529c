"""One publish run, as a numbered recipe.

1. Lock the state directory (two runs never overlap).
2. Open the state.  Missing, corrupt, of another schema, or for other base URIs: start a new
   session (RFC 8182 §3.3.1; BCP: any loss of state means a new session), and retire everything
   already in the output directories (deleted after the grace period, never at once).
3. Recover: make the visible outputs (``current`` symlink, notification) agree with the committed
   state, after checking that every file the notification names exists with its recorded size;
   remove leftovers of a crashed run (never visible to clients).
4. Scan the source by stat signature; read and hash only files whose signature changed.
   Bad files stop the run before anything is written (or are skipped with --skip-invalid), and
   so does a run that would withdraw most of the repository (the shrink guard).
5. Nothing changed: stop, writing nothing (only the stat signatures are refreshed).
6. Write, invisible to clients: the new objects into an rsync revision tree under a temporary
   name, the delta, the snapshot (from buckets, see :mod:`rpkirepo.publish.snapshot`) and their
   ``.gz`` siblings under ``<session>/<serial>/<random>/``.
7. Flush the filesystems (``syncfs``), then commit the state: the run's single commit point.
8. Make visible: swap ``current``, then write the notification (tmp, fsync, rename) last.
9. Collect garbage: files and trees whose grace period (counted from when they stopped being
   referenced) has passed.

A crash before 7 leaves only invisible leftovers (removed at the next run's step 3); a crash after
7 is completed by the next run's step 3.  Either way a client only ever sees a notification whose
files exist, and a ``current`` tree that is complete.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rpkirepo.errors import InputError, Reason, RpkiRepoError, StorageError
from rpkirepo.fsutil import (
    TMP_PREFIX,
    DirLock,
    fsync_dir,
    remove_tree,
    replace_symlink,
    sync_filesystem,
    write_all,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.objects import mtime_of
from rpkirepo.publish.rsync_tree import BackgroundTree, TreeWriter, slot_name
from rpkirepo.publish.served import (
    collect_garbage,
    pick_tree,
    prune_empty_dirs,
    write_notification,
)
from rpkirepo.publish.snapshot import (
    BucketCopy,
    BucketNew,
    SnapshotFiles,
    compress_buckets,
    gzip_bytes,
    split_bucket_lines,
    write_snapshot,
)
from rpkirepo.publish.source import SourceEntry, read_source, scan_source
from rpkirepo.publish.state import DeltaRow, ObjectRow, SlotRow, State
from rpkirepo.rrdp.model import (
    DeltaRef,
    FileKind,
    NotificationFile,
    SessionId,
    Sha256,
    SnapshotRef,
)
from rpkirepo.rrdp.parser import parse_notification
from rpkirepo.rrdp.writer import (
    delta_start,
    end_tag,
    notification_bytes,
    publish_element,
    withdraw_element,
)
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = ["PublishOptions", "PublishResult", "publish"]

log = logging.getLogger("rpkirepo.publish")

NOTIFICATION_NAME: Final = "notification.xml"
STATE_DB: Final = "publish.db"
#: Average objects per snapshot bucket aimed at; buckets split when they average 4x this.
BUCKET_TARGET: Final = 16
#: Up to this many changed objects, each written file and directory is fsynced; beyond, one
#: syncfs.  (An fsync costs ~0.5-1 ms on common virtual disks; syncfs costs whatever else is
#: dirty on the filesystem, typically tens of ms.)
FSYNC_EACH_MAX: Final = 32
#: The shrink guard ignores runs that withdraw fewer objects than this.
SHRINK_GUARD_MIN: Final = 10


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """What one ``rpkirepo publish`` run needs.  Defaults follow the publication-server BCP."""

    source_dir: Path
    rsync_base: RsyncUri
    https_base: HttpsUri
    rrdp_dir: Path
    rsync_dir: Path
    state_dir: Path
    #: Seconds a file or tree stays after it stopped being referenced (BCP: 2 h).
    grace: float = 7200.0
    #: Most deltas listed in the notification (their total size never exceeds the snapshot's).
    delta_max_count: int = 100
    #: Oldest delta listed, in seconds.
    delta_max_age: float = 86400.0
    #: ISA-L deflate level (0-3) of the .gz siblings.
    gzip_level: int = 3
    skip_invalid: bool = False
    rsync_include_host: bool = False
    #: Most rsync revision trees kept; past it the oldest is reused before its grace ends.
    rsync_max_revisions: int = 200
    #: Refuse a run that would withdraw more than this share of the published objects (an
    #: unmounted or emptied source directory must not empty the repository); 1.0 disables.
    max_shrink: float = 0.5
    #: Publish even when the shrink guard objects.
    force: bool = False
    #: Bytes of changed objects kept in memory between scan and write (beyond: read again).
    memory_budget: int = 256 * 1024 * 1024
    limits: Limits = DEFAULT_LIMITS
    workers: int = max(1, os.cpu_count() or 1)
    clock: Callable[[], float] = field(default=time.time, compare=False)


@dataclass(frozen=True, slots=True)
class PublishResult:
    session_id: str
    serial: int
    changed: bool
    new_session_reason: Reason | None
    added: int
    modified: int
    removed: int
    objects: int
    snapshot_size: int
    skipped: tuple[InputError, ...]
    notification: Path
    current_tree: Path
    #: Seconds per stage of the run (open, recover, scan, objects, tree, delta, snapshot, commit,
    #: publish, gc).
    timings: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(slots=True)
class _Change:
    """A new or modified object found by the scan."""

    entry: SourceEntry
    sha256: bytes
    data: bytes | None  # None when dropped to respect the memory budget
    old: ObjectRow | None


class _Index:
    """The committed object index, loaded lazily.

    A run needs every object's stat signature (to find what changed) but full rows only for
    the changed objects and the members of dirty buckets, so only signatures are loaded whole.
    """

    def __init__(self, state: State, *, empty: bool) -> None:
        self._state = state
        self.sigs: dict[str, bytes] = {} if empty else self._load(state)
        self._rows: dict[str, ObjectRow] = {}

    @staticmethod
    def _load(state: State) -> dict[str, bytes]:
        try:
            return state.signatures()
        except sqlite3.DatabaseError as exc:
            raise StorageError(Reason.STATE_CORRUPT, str(exc)) from exc

    def rows(self, paths: Iterable[str]) -> dict[str, ObjectRow]:
        wanted = [p for p in paths if p not in self._rows]
        if wanted:
            self._rows.update(self._state.rows(wanted))
        return self._rows

    def row(self, path: str) -> ObjectRow:
        return self.rows((path,))[path]


def _bucket_of(path: str, bits: int) -> int:
    return zlib.crc32(path.encode("ascii")) & ((1 << bits) - 1)


def _bits_for(count: int) -> int:
    bits = 0
    while (count >> bits) > BUCKET_TARGET:
        bits += 1
    return bits


class _Run:
    def __init__(self, opts: PublishOptions, progress: Progress) -> None:
        self.timings: dict[str, float] = {}
        self._last_lap = time.perf_counter()
        self.o = opts
        self.progress = progress
        self.now = opts.clock()
        self.revisions = opts.rsync_dir / "revisions"
        self.current_link = opts.rsync_dir / "current"
        self.notification_path = opts.rrdp_dir / NOTIFICATION_NAME
        base_path = opts.rsync_base.path
        prefix = (base_path + "/") if base_path else ""
        if opts.rsync_include_host:
            prefix = f"{opts.rsync_base.host}/{opts.rsync_base.module}/{prefix}"
        self.prefix = prefix
        self.executor = ThreadPoolExecutor(max_workers=opts.workers)

    def lap(self, name: str) -> None:
        """Charge the time since the previous lap to stage ``name`` (result and debug log)."""
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last_lap
        self._last_lap = now

    # --- helpers ---

    def uri(self, path: str) -> RsyncUri:
        return RsyncUri(self.o.rsync_base.uri + path)

    def https(self, rel: str) -> HttpsUri:
        return HttpsUri(self.o.https_base.uri + rel)

    def notification_from_state(self, state: State) -> NotificationFile:
        session = SessionId(_need(state.get("session")))
        serial = int(_need(state.get("serial")))
        snap = SnapshotRef(
            self.https(_need(state.get("snapshot_path"))),
            Sha256(bytes.fromhex(_need(state.get("snapshot_hash")))),
        )
        deltas = tuple(
            DeltaRef(d.serial, self.https(d.path), Sha256(d.sha256)) for d in state.deltas()
        )
        return NotificationFile(session, serial, snap, deltas)

    def referenced_files(self, state: State) -> dict[str, int]:
        """RRDP files the committed notification names (and their .gz), with expected sizes."""
        files: dict[str, int] = {}
        snap = _need(state.get("snapshot_path"))
        files[snap] = int(_need(state.get("snapshot_size")))
        files[snap + ".gz"] = -1
        for d in state.deltas():
            files[d.path] = d.size
            files[d.path + ".gz"] = -1
        return files

    # --- step 2: state ---

    def open_state(self) -> tuple[State, Reason | None]:
        db = self.o.state_dir / STATE_DB
        try:
            state = State.open_existing(db)
        except StorageError as exc:
            if exc.reason != Reason.STATE_MISSING:
                log.warning("state unusable, starting a new session", extra={"reason": exc.reason})
                if db.exists():
                    os.replace(db, db.with_name(f"{STATE_DB}.bad-{int(self.now)}"))
            return State.create(db), exc.reason
        if state.get("session") is None:
            return state, Reason.STATE_MISSING
        if (
            state.get("rsync_base") != self.o.rsync_base.uri
            or state.get("https_base") != self.o.https_base.uri
            or state.get("prefix") != self.prefix
        ):
            log.warning(
                "base URIs changed, starting a new session",
                extra={"reason": Reason.STATE_INCOMPATIBLE},
            )
            state.close()
            return State.create(db), Reason.STATE_INCOMPATIBLE
        return state, None

    # --- step 3: recovery ---

    def recover(self, state: State) -> Reason | None:
        """Bring visible outputs in line with the committed state; a reason means start anew."""
        slots = state.slots()
        current = [s for s in slots if s.retired_at is None]
        if len(current) != 1 or not (self.revisions / current[0].name).is_dir():
            return Reason.STATE_OUTPUT_MISMATCH
        gone = [
            s for s in slots if s.retired_at is not None and not (self.revisions / s.name).is_dir()
        ]
        if gone:
            state.begin()
            for s in gone:
                state.drop_slot(s.name)
            state.commit()
            slots = state.slots()
        for rel, size in self.referenced_files(state).items():
            try:
                st = os.stat(self.o.rrdp_dir / rel, follow_symlinks=False)
            except OSError:
                return Reason.STATE_OUTPUT_MISMATCH
            if size >= 0 and st.st_size != size:
                return Reason.STATE_OUTPUT_MISMATCH
        target = f"revisions/{current[0].name}"
        try:
            link_now = os.readlink(self.current_link)
        except OSError:
            link_now = None
        try:
            shown = self.notification_path.read_bytes()
        except OSError:
            shown = None
        self.restart_grace(state, shown, link_now)
        if link_now != target:
            log.warning(
                "current tree link did not match the state; repaired",
                extra={"reason": Reason.STATE_OUTPUT_MISMATCH},
            )
            replace_symlink(self.current_link, target)
        self.write_notification(state, only_if_different=True)
        self.remove_leftovers(state, {s.name for s in slots})
        return None

    def restart_grace(self, state: State, shown: bytes | None, link_now: str | None) -> None:
        """A run that died past its commit point left the old notification and ``current``
        visible: what they name was retired at that commit but served until now, so its grace
        period starts now."""
        uris: list[str] = []
        if shown is not None:
            try:
                n = parse_notification(shown)
                uris = [n.snapshot.uri.uri, *(d.uri.uri for d in n.deltas)]
            except RpkiRepoError:
                pass  # unreadable: rewritten below, and named nothing a client could use
        base = self.o.https_base.uri
        rels: list[str] = []
        for uri in uris:
            if uri.startswith(base):
                rels += [uri[len(base) :], uri[len(base) :] + ".gz"]
        retired = state.retired()
        rels = [r for r in rels if r in retired]
        name = link_now.rpartition("/")[2] if link_now is not None else None
        slots = [s for s in state.slots() if s.name == name and s.retired_at is not None]
        if not rels and not slots:
            return
        state.begin()
        for rel in rels:
            state.retire(rel, self.now, restart=True)
        for s in slots:
            state.put_slot(SlotRow(s.name, s.serial, self.now))
        state.commit()

    def remove_leftovers(self, state: State, known_slots: set[str]) -> None:
        """Remove what a crashed run wrote but never made visible."""
        for entry in os.scandir(self.revisions):
            if entry.name not in known_slots:
                log.info(
                    "removing unpublished tree %s",
                    entry.name,
                    extra={"reason": Reason.STORAGE_UNEXPECTED},
                )
                remove_tree(Path(entry.path))
        session = _need(state.get("session"))
        keep = set(self.referenced_files(state)) | set(state.retired())
        session_dir = self.o.rrdp_dir / session
        if session_dir.is_dir():
            for dirpath, _dirnames, filenames in os.walk(session_dir):
                for name in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), self.o.rrdp_dir)
                    if rel not in keep:
                        log.info(
                            "removing unpublished file %s",
                            rel,
                            extra={"reason": Reason.STORAGE_UNEXPECTED},
                        )
                        os.unlink(os.path.join(dirpath, name))
            prune_empty_dirs(session_dir)
        # Temporary files of a crashed atomic_write / replace_symlink.
        for directory in (self.o.rrdp_dir, self.o.rsync_dir):
            for name in os.listdir(directory):
                if name.startswith(TMP_PREFIX):
                    (directory / name).unlink(missing_ok=True)

    def retire_everything(self, state: State) -> None:
        """A new session: every file and tree already present goes into the grace queue.

        The grace period restarts at every attempt: the old notification (and ``current``)
        still name these files until a run of the new session succeeds.
        """
        for dirpath, _d, filenames in os.walk(self.o.rrdp_dir):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.o.rrdp_dir)
                if rel in (NOTIFICATION_NAME, NOTIFICATION_NAME + ".gz") or name.startswith(
                    TMP_PREFIX
                ):
                    continue
                state.retire(rel, self.now, restart=True)
        for entry in os.scandir(self.revisions):
            if entry.name.startswith(TMP_PREFIX):
                remove_tree(Path(entry.path))
            else:
                state.put_slot(SlotRow(entry.name, 0, self.now))

    # --- step 4: scan ---

    def scan(
        self, index: _Index
    ) -> tuple[
        dict[str, SourceEntry],
        list[_Change],
        list[tuple[str, bytes]],
        list[str],
        tuple[InputError, ...],
    ]:
        o = self.o
        result = scan_source(o.source_dir, o.limits, known=index.sigs)
        if result.problems and not o.skip_invalid:
            first = result.problems[0]
            raise InputError(
                first.reason,
                f"{len(result.problems)} unusable file(s) in the source directory; first: "
                f"{first.detail} (use --skip-invalid to publish the rest)",
                **first.context,
            )
        for p in result.problems:
            log.warning(
                "skipping %s: %s", p.context.get("path"), p.detail, extra={"reason": p.reason}
            )
        entries = result.entries
        changes: list[_Change] = []
        touched: list[tuple[str, bytes]] = []
        kept_bytes = 0
        sigs = index.sigs
        first_run = not sigs
        for path, e in entries.items():
            known = sigs.get(path)
            if known == e.sig:
                continue
            if first_run:
                changes.append(_Change(e, b"", None, None))  # read once, while writing
                continue
            data = read_source(o.source_dir, e, o.limits)
            sha = Sha256.of(data).digest
            row = index.row(path) if known is not None else None
            if row is not None and row.sha256 == sha:
                touched.append((path, e.sig))  # same content, new stat signature
                continue
            keep = kept_bytes + len(data) <= o.memory_budget
            kept_bytes += len(data) if keep else 0
            changes.append(_Change(e, sha, data if keep else None, row))
        removed = [p for p in sigs if p not in entries]
        return entries, changes, touched, removed, tuple(result.problems)

    def check_shrink(self, published: int, removed: int) -> None:
        """The shrink guard: refuse to withdraw more than ``max_shrink`` of the repository.

        Small repositories (under :data:`SHRINK_GUARD_MIN` objects withdrawn) change freely.
        """
        o = self.o
        if o.force or removed < SHRINK_GUARD_MIN or published == 0:
            return
        if removed > o.max_shrink * published:
            raise InputError(
                Reason.SOURCE_SHRINK,
                f"this run would withdraw {removed} of {published} published objects "
                f"(more than {o.max_shrink:.0%}); is the source directory complete? "
                "Use --force to publish anyway",
                removed=removed,
                published=published,
            )

    def load(self, change: _Change) -> bytes:
        """The bytes of a changed object, re-read (and re-checked) if not kept in memory."""
        if change.data is not None:
            return change.data
        data = read_source(self.o.source_dir, change.entry, self.o.limits)
        sha = Sha256.of(data).digest
        if change.sha256 and sha != change.sha256:
            raise InputError(
                Reason.SOURCE_CHANGED_DURING_READ,
                "content changed during the run",
                path=change.entry.path,
            )
        change.sha256 = sha
        return data

    # --- step 9: garbage ---

    def collect_garbage(self, state: State) -> None:
        collect_garbage(state, self.o.rrdp_dir, self.revisions, self.now - self.o.grace)

    def write_notification(self, state: State, *, only_if_different: bool = False) -> None:
        data = notification_bytes(self.notification_from_state(state))
        write_notification(
            self.notification_path, data, self.o.gzip_level, only_if_different=only_if_different
        )

    # --- steps 6-8: a new serial ---

    def new_serial(
        self,
        state: State,
        index: _Index,
        entries: dict[str, SourceEntry],
        changes: list[_Change],
        touched: list[tuple[str, bytes]],
        removed: list[str],
        new_session: bool,
    ) -> tuple[str, int, int]:
        o = self.o
        if new_session:
            session = str(uuid.uuid4())
            serial = 1
        else:
            session = _need(state.get("session"))
            serial = int(_need(state.get("serial"))) + 1
        session_id = SessionId(session)
        old_bits = int(state.get("bucket_bits") or 0)
        bits = old_bits
        rebucket = new_session or (len(entries) >> bits) > 4 * BUCKET_TARGET
        if rebucket:
            bits = _bits_for(len(entries))
            if not new_session:
                log.info(
                    "snapshot buckets resized %d -> %d bits",
                    old_bits,
                    bits,
                    extra={"reason": "rebucket"},
                )
        rel_dir = f"{session}/{serial}/{secrets.token_urlsafe(12)}"
        out_dir = o.rrdp_dir / rel_dir
        os.makedirs(out_dir, mode=0o755)

        changed_paths = {c.entry.path: c for c in changes}
        # New index rows: unchanged rows keep their bucket unless re-bucketing.
        new_rows: dict[str, ObjectRow] = {}
        current_slot = next((s for s in state.slots() if s.retired_at is None), None)
        link_source = (
            self.revisions / current_slot.name
            if current_slot is not None and not new_session
            else None
        )

        # --- rsync tree: pick a tree to bring forward, or make a new one ---
        tree, base_serial = self.pick_tree(state, link_source, new_session)
        # Durability: a small update fsyncs exactly what it wrote (O(k)); a large one, or a
        # fresh tree full of new links, flushes the filesystem once (syncfs).
        small = base_serial >= 0 and len(changes) + len(removed) <= FSYNC_EACH_MAX
        tree.fsync_files = small

        self.lap("prepare")
        # --- the tree's other objects first: a reused tree loses its removed paths before any
        # is created, since a name can change from a directory to a file and back ---
        if not new_session:
            self.bring_forward(state, index, tree, base_serial, changed_paths, set(removed))
            self.lap("tree")

        # --- objects: read the changed ones, write them into the tree, build index rows ---
        total = len(changes)
        # Many files: a helper process creates them while this one reads and parses the next
        # (see BackgroundTree); a few: written here, each fsynced.
        writer: TreeWriter | BackgroundTree = tree if small else BackgroundTree(tree)
        try:
            self._write_objects(changes, writer, new_rows, bits, total)
        except BaseException:
            if isinstance(writer, BackgroundTree):
                writer.abort()
            raise
        if isinstance(writer, BackgroundTree):
            writer.close()
        self.progress("objects", total, total)
        tree.finish()
        self.lap("objects")

        # --- delta (not for a new session: serial 1 has none) ---
        delta_row: DeltaRow | None = None
        if not new_session:
            delta_row = self.write_delta(session_id, serial, rel_dir, changes, removed, index, tree)

        # --- snapshot ---
        self.lap("delta")
        snap = self.write_snapshot_files(
            state,
            session_id,
            serial,
            rel_dir,
            bits,
            rebucket,
            index,
            new_rows,
            changes,
            removed,
            tree,
        )

        self.lap("snapshot")
        # --- state for the new serial ---
        state.begin()
        try:
            if not new_session:
                state.delete_objects(removed)
            if rebucket and not new_session:
                # Every row moves to its new bucket.
                gone = set(removed)
                moved = (
                    r._replace(bucket=_bucket_of(p, bits))
                    for p, r in state.objects().items()
                    if p not in changed_paths and p not in gone
                )
                state.put_objects(moved)
            state.put_objects(new_rows.values())
            state.update_stat(touched)
            state.replace_buckets(snap.spans)
            old_snapshot = state.get("snapshot_path")
            if old_snapshot is not None and not new_session:
                state.retire(old_snapshot, self.now)
                state.retire(old_snapshot + ".gz", self.now)
            for key, value in (
                ("session", session),
                ("serial", serial),
                ("rsync_base", o.rsync_base.uri),
                ("https_base", o.https_base.uri),
                ("prefix", self.prefix),
                ("bucket_bits", bits),
                ("snapshot_path", f"{rel_dir}/snapshot.xml"),
                ("snapshot_hash", snap.hash.hex),
                ("snapshot_size", snap.size),
            ):
                state.set(key, value)
            if delta_row is not None:
                state.add_delta(delta_row)
            self.trim_deltas(state, snap.size)
            state.log_changes(
                serial,
                [(c.entry.path, c.sha256) for c in changes] + [(p, None) for p in removed],
            )
            # Trees: the new one is current, the previous current one starts its grace.
            for s in state.slots():
                if s.retired_at is None:
                    state.put_slot(SlotRow(s.name, s.serial, self.now))
            name = slot_name(session, serial)
            tree.rename_to(self.revisions / name)
            state.put_slot(SlotRow(name, serial, None))
            oldest = min((s.serial for s in state.slots() if s.serial > 0), default=serial)
            state.prune_changes(oldest)
            if small:
                for name_ in ("snapshot.xml", "snapshot.xml.gz", "delta.xml", "delta.xml.gz"):
                    _fsync_path(out_dir / name_)
                for d in (
                    out_dir,
                    out_dir.parent,
                    out_dir.parent.parent,
                    o.rrdp_dir,
                    self.revisions,
                ):
                    fsync_dir(d)
            else:
                sync_filesystem(o.rrdp_dir)
                sync_filesystem(o.rsync_dir)
            self.lap("sync")
            state.commit()  # ---- the commit point ----
            self.lap("commit")
        except BaseException:
            state.rollback()
            raise
        replace_symlink(self.current_link, f"revisions/{name}")
        self.write_notification(state)
        self.lap("publish")
        return session, serial, snap.size

    def _write_objects(
        self,
        changes: list[_Change],
        tree: TreeWriter | BackgroundTree,
        new_rows: dict[str, ObjectRow],
        bits: int,
        total: int,
    ) -> None:
        o = self.o
        kept = 0
        for i, c in enumerate(changes):
            data = self.load(c)
            t = mtime_of(data, c.entry.path)
            mtime = t.seconds if t.seconds >= 0 else int(self.now)
            if t.seconds < 0:
                log.info(
                    "no time in %s, mtime is the publication time",
                    c.entry.path,
                    extra={"reason": t.reason or Reason.OBJECT_MALFORMED},
                )
            tree.write(c.entry.path, data, mtime)
            # Keep bytes for the delta and snapshot within the budget; past it they are read
            # back from the tree just written.
            if kept + len(data) <= o.memory_budget:
                c.data = data
                kept += len(data)
            else:
                c.data = None
            e = c.entry
            new_rows[e.path] = ObjectRow(
                e.path, c.sha256, len(data), mtime, e.sig, _bucket_of(e.path, bits)
            )
            if i % 2048 == 0:
                self.progress("objects", i, total)

    def pick_tree(
        self, state: State, link_source: Path | None, new_session: bool
    ) -> tuple[TreeWriter, int]:
        """A tree to bring to the new serial: an expired one from the ring, or a new one."""
        return pick_tree(
            state,
            self.revisions,
            self.prefix,
            None if new_session else link_source,
            now=self.now,
            grace=self.o.grace,
            max_revisions=self.o.rsync_max_revisions,
        )

    def bring_forward(
        self,
        state: State,
        index: _Index,
        tree: TreeWriter,
        base_serial: int,
        changed_now: dict[str, _Change],
        removed_now: set[str],
    ) -> None:
        """Make ``tree`` equal to the new revision, but for this run's changes (written next).

        ``base_serial`` -1: a fresh tree; every unchanged object is linked from the current tree.
        Otherwise the tree holds revision ``base_serial``: replay the change log after it.
        """
        if base_serial < 0:
            n = len(index.sigs)
            for i, path in enumerate(index.sigs):
                if path in changed_now or path in removed_now:
                    continue
                tree.link(path)
                if i % 8192 == 0:
                    self.progress("tree", i, n)
            self.progress("tree", n, n)
            return
        final: dict[str, bytes | None] = {}
        for _serial, path, sha in state.changes_after(base_serial):
            final[path] = sha
        # Every removal before any creation: ``x.cer`` may have been a directory (``x.cer/y.roa``)
        # in this tree and be a file now, or the other way round.
        gone = {p for p, sha in final.items() if sha is None and p not in changed_now}
        for path in sorted(gone | removed_now):
            tree.remove(path)
        for path, sha in final.items():
            if sha is not None and path not in changed_now and path not in removed_now:
                tree.link(path)

    def write_delta(
        self,
        session_id: SessionId,
        serial: int,
        rel_dir: str,
        changes: list[_Change],
        removed: list[str],
        index: _Index,
        tree: TreeWriter,
    ) -> DeltaRow:
        """RFC 8182 §3.5.3: one delta with every change of this serial."""
        pieces = [delta_start(session_id, serial)]
        # Withdraws first, then publishes, each by path: an RP applying elements in order to a
        # filesystem cache can then follow a name that turns from a file into a directory (or
        # back) within one delta.
        gone = index.rows(removed)
        withdraws = sorted(removed)
        pieces.extend(withdraw_element(self.uri(p), Sha256(gone[p].sha256)) for p in withdraws)
        for c in sorted(changes, key=lambda c: c.entry.path):
            data = c.data if c.data is not None else _read_tree(tree, c.entry.path)
            replaces = Sha256(c.old.sha256) if c.old is not None else None
            pieces.append(publish_element(self.uri(c.entry.path), data, replaces))
        pieces.append(end_tag(FileKind.DELTA))
        data = b"".join(pieces)
        path = self.o.rrdp_dir / rel_dir / "delta.xml"
        _write_new(path, data)
        _write_new(path.with_name("delta.xml.gz"), gzip_bytes(data, self.o.gzip_level))
        return DeltaRow(serial, f"{rel_dir}/delta.xml", Sha256.of(data).digest, len(data), self.now)

    def trim_deltas(self, state: State, snapshot_size: int) -> None:
        """RFC 8182 §3.3.2: listed deltas never add up to more than the snapshot; plus caps."""
        deltas = state.deltas()
        total = 0
        keep_from = len(deltas)
        for i in range(len(deltas) - 1, -1, -1):
            d = deltas[i]
            total += d.size
            if (
                total > snapshot_size
                or len(deltas) - i > self.o.delta_max_count
                or self.now - d.made > self.o.delta_max_age
            ):
                break
            keep_from = i
        for d in deltas[:keep_from]:
            state.drop_delta(d.serial)
            state.retire(d.path, self.now)
            state.retire(d.path + ".gz", self.now)

    def write_snapshot_files(
        self,
        state: State,
        session_id: SessionId,
        serial: int,
        rel_dir: str,
        bits: int,
        rebucket: bool,
        index: _Index,
        new_rows: dict[str, ObjectRow],
        changes: list[_Change],
        removed: list[str],
        tree: TreeWriter,
    ) -> SnapshotFiles:
        o = self.o
        out = o.rrdp_dir / rel_dir
        changed = {c.entry.path: c for c in changes}
        removed_set = set(removed)
        prev_path = state.get("snapshot_path")
        previous = (
            (o.rrdp_dir / prev_path, o.rrdp_dir / (prev_path + ".gz"))
            if prev_path is not None and not rebucket
            else None
        )
        spans = state.buckets() if previous is not None else {}
        # Members of each bucket after this serial.
        dirty: set[int] = set()
        if rebucket:
            members: dict[int, list[str]] = {}
            for p in index.sigs:
                if p not in removed_set and p not in changed:
                    members.setdefault(_bucket_of(p, bits), []).append(p)
            for p in new_rows:
                members.setdefault(_bucket_of(p, bits), []).append(p)
            dirty = set(members)
        else:
            for r in index.rows(removed_set).values():
                if r.path in removed_set:
                    dirty.add(r.bucket)
            for r in new_rows.values():
                dirty.add(r.bucket)
            members = {b: [] for b in dirty}
            for p, bucket in state.paths_in_buckets(dirty):
                if p not in removed_set and p not in changed:
                    members[bucket].append(p)
            for p, r in new_rows.items():
                members[r.bucket].append(p)
        # Order: previous snapshot order for existing buckets, new buckets after them.
        order = [s.bucket for s in sorted(spans.values(), key=lambda s: s.xml_off)]
        order += sorted(b for b in members if b not in spans)

        def build(bucket: int) -> bytes:
            names = sorted(members.get(bucket, ()))
            reuse: dict[str, bytes] = {}
            if bucket in spans and previous is not None:
                s = spans[bucket]
                with open(previous[0], "rb") as f:
                    f.seek(s.xml_off)
                    reuse = split_bucket_lines(f.read(s.xml_len))
            lines = []
            for name in names:
                uri = self.o.rsync_base.uri + name
                c = changed.get(name)
                if c is None and uri in reuse:
                    lines.append(reuse[uri])
                    continue
                data = c.data if c is not None and c.data is not None else _read_tree(tree, name)
                lines.append(publish_element(self.uri(name), data))
            return b"".join(lines)

        def items() -> Iterator[BucketCopy | BucketNew]:
            dirty_order = [b for b in order if b in dirty and members.get(b)]
            built = compress_buckets(
                self.executor, ((b, build(b)) for b in dirty_order), o.gzip_level, window=64
            )
            built_iter = iter(built)
            n = len(order)
            for i, b in enumerate(order):
                if b in dirty:
                    if members.get(b):
                        yield next(built_iter)
                else:
                    yield BucketCopy(spans[b])
                if i % 1024 == 0:
                    self.progress("snapshot", i, n)
            self.progress("snapshot", n, n)

        return write_snapshot(
            out / "snapshot.xml",
            out / "snapshot.xml.gz",
            session_id,
            serial,
            items(),
            previous,
            o.gzip_level,
        )


def _read_tree(tree: TreeWriter, relpath: str) -> bytes:
    """An unchanged object's bytes, from the tree being built (it holds every current object)."""
    path = os.path.join(tree.root, tree.prefix + relpath)
    with open(path, "rb") as f:
        return f.read()


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _need(value: str | None) -> str:
    if value is None:
        raise StorageError(Reason.STATE_CORRUPT, "state lacks a required value")
    return value


def publish(opts: PublishOptions, progress: Progress = _no_progress) -> PublishResult:
    """Run the recipe above once.  Raises :class:`RpkiRepoError` subclasses only on purpose."""
    if not opts.rsync_base.is_directory or not opts.https_base.is_directory:
        raise InputError(Reason.USAGE, "base URIs must end with a slash")
    # Everything published must be world-readable whatever the caller's umask: HTTP servers and
    # rsync daemons commonly run as another user.
    old_umask = os.umask(0o022)
    try:
        for d in (opts.state_dir, opts.rrdp_dir, opts.rsync_dir, opts.rsync_dir / "revisions"):
            os.makedirs(d, mode=0o755, exist_ok=True)
        for d in (opts.rrdp_dir, opts.rsync_dir, opts.rsync_dir / "revisions"):
            os.chmod(d, 0o755)  # noqa: S103 - published output is world-readable on purpose
        with DirLock(opts.state_dir):
            run = _Run(opts, progress)
            try:
                return _publish_locked(run)
            finally:
                run.executor.shutdown(wait=True)
    finally:
        os.umask(old_umask)


def _publish_locked(run: _Run) -> PublishResult:
    o = run.o
    state, new_reason = run.open_state()
    run.lap("open")
    try:
        if new_reason is None:
            new_reason = run.recover(state)
            if new_reason is not None:
                log.warning(
                    "published files do not match the state, starting a new session",
                    extra={"reason": new_reason},
                )
                state.close()
                state = State.create(o.state_dir / STATE_DB)
        new_session = new_reason is not None
        if new_session:
            state.begin()
            run.retire_everything(state)
            state.commit()
        try:
            index = _Index(state, empty=new_session)
        except StorageError as exc:
            log.warning("state unreadable, starting a new session", extra={"reason": exc.reason})
            state.close()
            state = State.create(o.state_dir / STATE_DB)
            new_session, new_reason = True, exc.reason
            state.begin()
            run.retire_everything(state)
            state.commit()
            index = _Index(state, empty=True)
        run.lap("recover")
        entries, changes, touched, removed, skipped = run.scan(index)
        run.check_shrink(len(index.sigs), len(removed))
        run.lap("scan")
        if not new_session and not changes and not removed:
            if touched:
                state.begin()
                state.update_stat(touched)
                state.commit()
            run.collect_garbage(state)
            run.lap("gc")
            return PublishResult(
                session_id=_need(state.get("session")),
                serial=int(_need(state.get("serial"))),
                changed=False,
                new_session_reason=None,
                added=0,
                modified=0,
                removed=0,
                objects=len(entries),
                snapshot_size=int(_need(state.get("snapshot_size"))),
                skipped=skipped,
                notification=run.notification_path,
                current_tree=run.current_link,
                timings=run.timings,
            )
        session, serial, snapshot_size = run.new_serial(
            state, index, entries, changes, touched, removed, new_session
        )
        run.collect_garbage(state)
        run.lap("gc")
        log.debug(
            "stage seconds: %s",
            " ".join(f"{k}={v:.3f}" for k, v in run.timings.items()),
            extra={"reason": "timing"},
        )
        added = sum(1 for c in changes if c.old is None)
        return PublishResult(
            session_id=session,
            serial=serial,
            changed=True,
            new_session_reason=new_reason,
            added=added,
            modified=len(changes) - added,
            removed=len(removed),
            objects=len(entries),
            snapshot_size=snapshot_size,
            skipped=skipped,
            notification=run.notification_path,
            current_tree=run.current_link,
            timings=run.timings,
        )
    except RpkiRepoError:
        state.rollback()
        raise
    finally:
        state.close()
