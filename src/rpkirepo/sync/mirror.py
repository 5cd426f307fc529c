"""One sync run of one repository, as a numbered recipe.

1. Lock the state directory: two runs never overlap.
2. Open the state (SQLite, the publisher's schema): the upstream session and serial, every
   object (path, SHA-256, size, mtime), the deltas we list, the rsync trees, the files in their
   grace period, the notification's cache validators.
3. Recover: make what is served (``current``, our notification) agree with the committed state;
   remove what a crashed run left unpublished.  If the served files do not match the state, the
   state is dropped and the next step takes the snapshot.
4. Fetch the upstream notification, conditionally (ETag / Last-Modified from the last run): an
   unchanged notification costs one request and ends the run.
5. Plan (:func:`rpkirepo.rrdp.plan.plan_update`): deltas when they connect our serial to the
   upstream's, the snapshot otherwise, with the reason logged.
6. Apply, invisible to clients: each delta (or the snapshot) is streamed once: written to a
   staging file with its ``.gz`` sibling, parsed and hashed as it arrives, and applied to an rsync
   revision tree under a temporary name (a ring tree brought forward from the change log, so a
   change of k objects costs O(k)).  A delta that does not fit our state (wrong hash, unknown
   object) or whose file hash is wrong falls back to the snapshot.  The snapshot file of the new
   serial is copied byte for byte (hash-checked, not parsed) when deltas were applied; deltas we
   list but never applied are fetched, parsed and hash-checked.  The shrink guard refuses a
   snapshot that drops most of the repository.
7. Flush the filesystems (``syncfs``), then commit the state: the run's one commit point.
8. Make visible: swap ``current``; wait ``--rrdp-notify-delay``; write our notification (naming
   the public URIs, listing the deltas we hold) last, atomically.
9. Collect garbage: RRDP files and trees whose grace period (counted from when they stopped being
   referenced) has passed.

A failure at any step before 7 leaves the last good state served and committed; a crash after 7
is completed by the next run's step 3.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import sqlite3
import stat
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from isal import isal_zlib

from rpkirepo.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
    StorageError,
)
from rpkirepo.fsutil import (
    TMP_PREFIX,
    DirLock,
    fsync_dir,
    remove_tree,
    replace_symlink,
    sync_filesystem,
    write_all,
)
from rpkirepo.httpget import Validators
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.objects import mtime_of
from rpkirepo.publish.rsync_tree import BackgroundTree, MtimeRule, TreeWriter
from rpkirepo.publish.served import (
    collect_garbage,
    pick_tree,
    prune_empty_dirs,
    write_notification,
)
from rpkirepo.publish.state import DeltaRow, SlotRow, State
from rpkirepo.rrdp.model import (
    DeltaRef,
    FileKind,
    NotificationFile,
    PublishElement,
    SessionId,
    Sha256,
    SnapshotRef,
    WithdrawElement,
)
from rpkirepo.rrdp.parser import NEED_DATA, RrdpParser, parse_notification
from rpkirepo.rrdp.plan import LocalRrdpState, PlanAction, UpdatePlan, plan_update
from rpkirepo.rrdp.writer import notification_bytes
from rpkirepo.sync.upstream import DirUpstream, Upstream, relative_to_base
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = ["STATE_DB", "SyncOptions", "SyncResult", "adopt_tree", "read_status", "sync_once"]

log = logging.getLogger("rpkirepo.sync")

STATE_DB: Final = "sync.db"
#: Objects per batch when a snapshot is compared with the state (bounds memory).
BATCH: Final = 2000
#: The shrink guard ignores repositories losing fewer objects than this.
SHRINK_GUARD_MIN: Final = 10

Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """One repository to mirror.  Defaults follow the publication-server BCP."""

    #: The public notification URI (what relying parties fetch from this node).
    notification_uri: HttpsUri
    #: Where the files are read: the hidden server (http(s) base) or a local directory.
    upstream: Upstream
    state_dir: Path
    rrdp_dir: Path
    rsync_dir: Path
    #: Seconds new snapshot/delta files are in place before our notification names them.
    rrdp_notify_delay: float = 0.0
    #: Most deltas our notification lists (None: as many as upstream lists and we hold, their
    #: total size never above the snapshot's).
    rrdp_max_deltas: int | None = None
    rsync_enabled: bool = True
    rsync_include_host: bool = False
    #: Seconds a file or tree stays after it stopped being current (BCP: 2 h).
    cleanup_after: float = 7200.0
    #: Most rsync revision trees kept; past it the oldest is reused before its grace ends.
    rsync_max_revisions: int = 200
    max_shrink: float = 0.5
    force: bool = False
    gzip_level: int = 3
    #: Hard-link snapshot and delta files from a local upstream directory on the same
    #: filesystem instead of copying them (the upstream must never modify a published file in
    #: place, which publishers writing by rename never do).
    link_local: bool = False
    #: False: keep the repository as an object store only (``rpkirepo fetch``): no RRDP files
    #: are kept or served, no notification is written, the snapshot is never fetched when
    #: deltas suffice, files may sit anywhere on the notification's origin (RFC 9674), object
    #: paths include the host, and there is no shrink guard (a relying party follows its
    #: repository).  The delta hashes upstream lists are still kept for the desync check.
    rrdp_output: bool = True
    limits: Limits = DEFAULT_LIMITS
    clock: Callable[[], float] = field(default=time.time, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    @property
    def public_base(self) -> HttpsUri:
        """Where RRDP files may be: the notification's directory for a mirror (what we serve
        must fit under our public base), its origin for a store (RFC 9674)."""
        text = self.notification_uri.uri
        cut = text.find("/", len("https://")) if not self.rrdp_output else text.rfind("/")
        return HttpsUri(text[: cut + 1])

    @property
    def notification_name(self) -> str:
        text = self.notification_uri.uri
        return text[len(self.public_base.uri) :]

    @property
    def include_host(self) -> bool:
        return self.rsync_include_host or not self.rrdp_output


@dataclass(frozen=True, slots=True)
class SyncResult:
    #: not-modified | up-to-date | deltas | snapshot
    outcome: str
    reason: Reason | None
    session_id: str
    serial: int
    objects: int = 0
    added: int = 0
    modified: int = 0
    removed: int = 0
    deltas_applied: int = 0
    deltas_listed: int = 0
    bytes_fetched: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class _DeltaMismatch(Exception):
    """A delta does not fit our state: fall back to the snapshot (never escapes the module)."""

    def __init__(self, error: RpkiRepoError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class _Staged:
    rel: str
    tmp: Path
    tmp_gz: Path
    sha256: Sha256
    size: int


class _Run:
    def __init__(self, opts: SyncOptions, progress: Progress) -> None:
        self.o = opts
        self.progress = progress
        self.now = opts.clock()
        self.base = opts.public_base
        self.revisions = opts.rsync_dir / "revisions"
        self.current_link = opts.rsync_dir / "current"
        self.notification_path = opts.rrdp_dir / opts.notification_name
        self.timings: dict[str, float] = {}
        self._lap = time.monotonic()
        self.fetched = 0
        self.deadline = time.monotonic() + opts.limits.sync_run_deadline
        self.staged: list[_Staged] = []
        #: Objects added, modified and removed by the run (set by the apply step).
        self.stats = {"added": 0, "modified": 0, "removed": 0}
        #: Files upstream rewrote under a name we serve: never replaced, never listed again.
        self.changed_names: set[str] = set()
        #: The rsync module every object must belong to (cached from the state).
        self._module = ""

    def lap(self, name: str) -> None:
        t = time.monotonic()
        self.timings[name] = self.timings.get(name, 0.0) + t - self._lap
        self._lap = t

    # ------------------------------------------------------------------ keys and URIs

    def key(self, uri: RsyncUri, state: State) -> str:
        """The object's path in the rsync tree and in the state."""
        if self.o.include_host:
            host = uri.host if uri.port is None else f"{uri.host}:{uri.port}"
            return f"{host}/{uri.module}/{uri.path}"
        module = f"rsync://{uri.host}{'' if uri.port is None else f':{uri.port}'}/{uri.module}/"
        if module == self._module:
            return uri.path
        known = state.get("rsync_module")
        if not known:
            state.set("rsync_module", module)
        elif known != module:
            raise RemoteProtocolError(
                Reason.SYNC_RSYNC_MODULE,
                "objects of more than one rsync module; use --rsync-include-host",
                uri=uri.uri,
                module=known,
            )
        self._module = module
        return uri.path

    def mtime(self, data: bytes, path: str) -> int:
        """RFC 9589's rule; an object without a usable time gets the sync time."""
        t = mtime_of(data, path, limits=self.o.limits)
        if t.seconds >= 0:
            return t.seconds
        log.info("no time in %s, mtime is the sync time", path, extra={"reason": t.reason})
        return int(self.now)

    def https(self, rel: str) -> HttpsUri:
        return HttpsUri(self.base.uri + rel)

    # ------------------------------------------------------------------ state

    def open_state(self) -> State:
        db = self.o.state_dir / STATE_DB
        try:
            state = State.open_existing(db)
        except StorageError as exc:
            if exc.reason != Reason.STATE_MISSING:
                log.warning("state unusable, taking the snapshot", extra={"reason": exc.reason})
                if db.exists():
                    os.replace(db, db.with_name(f"{STATE_DB}.bad-{int(self.now)}"))
            state = State.create(db)
        owner = state.get("notification_uri")
        if owner is None:
            state.begin()
            state.set("notification_uri", self.o.notification_uri.uri)
            state.set("include_host", int(self.o.include_host))
            state.commit()
        elif owner != self.o.notification_uri.uri:
            state.close()
            raise ConfigError(
                Reason.CONFIG_INVALID,
                "this state directory belongs to another repository",
                state_dir=str(self.o.state_dir),
                repository=owner,
            )
        elif state.get("include_host") != str(int(self.o.include_host)):
            # A layout change: every tree must be rebuilt from the snapshot.
            state.begin()
            self.forget_session(state)
            state.set("include_host", int(self.o.include_host))
            state.commit()
        return state

    def forget_session(self, state: State) -> None:
        """Drop what we know of upstream (inside a transaction): the next plan takes the
        snapshot.  Served files and trees stay until their grace has passed."""
        for key in ("session", "serial", "etag", "last_modified"):
            state.set(key, "")
        for d in state.deltas():
            state.drop_delta(d.serial)
            if self.o.rrdp_output:
                for rel in (d.path, d.path + ".gz"):
                    state.retire(rel, self.now)
        snap = state.get("snapshot_path")
        if snap:
            state.retire(snap, self.now)
            state.retire(snap + ".gz", self.now)
            state.set("snapshot_path", "")
        for s in state.slots():
            state.put_slot(
                SlotRow(s.name, 0, s.retired_at if s.retired_at is not None else self.now)
            )
        # Object keys may have changed form, and the trees may not match: start from nothing.
        state.connection.execute("DELETE FROM objects")
        state.prune_changes(2**63 - 1)
        state.set("rsync_module", "")
        self._module = ""

    def session(self, state: State) -> tuple[str, int] | None:
        session, serial = state.get("session"), state.get("serial")
        if not session or not serial:
            return None
        return session, int(serial)

    def notification_from_state(self, state: State) -> NotificationFile | None:
        held = self.session(state)
        snap = state.get("snapshot_path")
        if held is None or not snap:
            return None
        deltas = tuple(
            DeltaRef(d.serial, self.https(d.path), Sha256(d.sha256)) for d in state.deltas()
        )
        return NotificationFile(
            SessionId(held[0]),
            held[1],
            SnapshotRef(self.https(snap), Sha256(bytes.fromhex(state.get("snapshot_hash") or ""))),
            deltas,
        )

    def referenced(self, state: State) -> dict[str, int]:
        files: dict[str, int] = {}
        if not self.o.rrdp_output:
            return files  # a store keeps no RRDP files
        snap = state.get("snapshot_path")
        if snap:
            files[snap] = int(state.get("snapshot_size") or -1)
            files[snap + ".gz"] = -1
        for d in state.deltas():
            files[d.path] = d.size
            files[d.path + ".gz"] = -1
        return files

    # ------------------------------------------------------------------ step 3: recover

    def recover(self, state: State) -> None:
        ok = self.session(state) is not None
        current = [s for s in state.slots() if s.retired_at is None]
        if ok and self.o.rsync_enabled:
            ok = len(current) == 1 and (self.revisions / current[0].name).is_dir()
        if ok:
            for rel, size in self.referenced(state).items():
                try:
                    st = os.stat(self.o.rrdp_dir / rel, follow_symlinks=False)
                except OSError:
                    ok = False
                    break
                if size >= 0 and st.st_size != size:
                    ok = False
                    break
        if not ok and self.session(state) is not None:
            log.warning(
                "served files do not match the state; taking the snapshot",
                extra={"reason": Reason.STATE_OUTPUT_MISMATCH},
            )
            state.begin()
            self.forget_session(state)
            state.commit()
        gone = [
            s
            for s in state.slots()
            if s.retired_at is not None and not (self.revisions / s.name).is_dir()
        ]
        if gone:
            state.begin()
            for s in gone:
                state.drop_slot(s.name)
            state.commit()
        if ok:
            if self.o.rsync_enabled:
                target = f"revisions/{current[0].name}"
                try:
                    link_now: str | None = os.readlink(self.current_link)
                except OSError:
                    link_now = None
                if link_now != target:
                    log.warning(
                        "current tree link did not match the state; repaired",
                        extra={"reason": Reason.STATE_OUTPUT_MISMATCH},
                    )
                    replace_symlink(self.current_link, target)
            self.write_notification(state, only_if_different=True)
        self.remove_leftovers(state)

    def remove_leftovers(self, state: State) -> None:
        """Delete what a crashed run wrote but never made visible.  Without a committed session
        (first run, lost state) unknown files and trees may be what clients see now: they enter
        the grace queue instead."""
        if self.session(state) is None:
            self.retire_unknown(state)
        known = {s.name for s in state.slots()}
        if self.revisions.is_dir():
            for entry in os.scandir(self.revisions):
                if entry.name not in known:
                    log.info(
                        "removing unpublished tree %s",
                        entry.name,
                        extra={"reason": Reason.STORAGE_UNEXPECTED},
                    )
                    remove_tree(Path(entry.path))
        keep = set(self.referenced(state)) | set(state.retired())
        keep |= {self.o.notification_name, self.o.notification_name + ".gz"}
        for dirpath, dirnames, filenames in os.walk(self.o.rrdp_dir):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.o.rrdp_dir)
                if rel not in keep:
                    log.info(
                        "removing unpublished file %s",
                        rel,
                        extra={"reason": Reason.STORAGE_UNEXPECTED},
                    )
                    os.unlink(os.path.join(dirpath, name))
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
        for entry in os.scandir(self.o.rrdp_dir):
            if entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False):
                remove_tree(Path(entry.path))
        prune_empty_dirs(self.o.rrdp_dir)
        if self.o.rsync_dir.is_dir():
            for name in os.listdir(self.o.rsync_dir):
                if name.startswith(TMP_PREFIX):
                    (self.o.rsync_dir / name).unlink(missing_ok=True)

    def retire_unknown(self, state: State) -> None:
        keep = set(self.referenced(state)) | set(state.retired())
        keep |= {self.o.notification_name, self.o.notification_name + ".gz"}
        state.begin()
        for dirpath, dirnames, filenames in os.walk(self.o.rrdp_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.o.rrdp_dir)
                if rel not in keep and not name.startswith(TMP_PREFIX):
                    state.retire(rel, self.now)
        known = {s.name for s in state.slots()}
        if self.revisions.is_dir():
            for entry in os.scandir(self.revisions):
                if entry.name not in known and not entry.name.startswith(TMP_PREFIX):
                    state.put_slot(SlotRow(entry.name, 0, self.now))
        state.commit()

    # ------------------------------------------------------------------ step 4: notification

    def fetch_notification(self, state: State) -> tuple[NotificationFile | None, Validators]:
        validators: Validators | None = None
        if self.session(state) is not None and (
            self.notification_path.exists() or not self.o.rrdp_output
        ):
            validators = Validators(state.get("etag") or None, state.get("last_modified") or None)
        with self.o.upstream.open(
            self.o.notification_name,
            max_size=self.o.limits.max_notification_size,
            validators=validators,
            deadline=self.deadline,
        ) as f:
            if f.not_modified:
                return None, f.validators
            data = b"".join(f.chunks())
            self.fetched += f.wire_bytes
        notification = parse_notification(data, limits=self.o.limits)
        self.check_names(state, notification)
        return notification, f.validators

    def check_names(self, state: State, notification: NotificationFile) -> None:
        """Every file must sit under the public base (rrdp-checklist (b)1, RFC 9674), and its
        local path must not clash with our notification, another listed file, a ``.gz``
        sibling or a directory; a file we serve never changes under its name (RFC 9697)."""
        listed = [(notification.snapshot.uri, notification.snapshot.hash)]
        listed += [(d.uri, d.hash) for d in notification.deltas]
        if not self.o.rrdp_output:
            for uri, _digest in listed:
                try:
                    relative_to_base(uri, self.base)
                except RemoteProtocolError as exc:
                    # rrdp-checklist (b)3, (c)16: RRDP fails, the caller falls back to rsync.
                    raise RemoteProtocolError(
                        Reason.RRDP_CROSS_ORIGIN,
                        "a snapshot or delta is not on the notification's origin (RFC 9674)",
                        uri=uri.uri,
                        origin=self.base.uri,
                    ) from exc
            return
        taken = {self.o.notification_name, self.o.notification_name + ".gz"}
        dirs: set[str] = set()
        rels: list[str] = []
        for uri, _digest in listed:
            rel = relative_to_base(uri, self.base)
            parents = {rel.rsplit("/", i)[0] for i in range(1, rel.count("/") + 1)}
            if rel in taken or rel + ".gz" in taken or rel in dirs or parents & taken:
                raise RemoteProtocolError(
                    Reason.SYNC_NAME_CLASH,
                    "listed files clash with each other or with the notification",
                    uri=uri.uri,
                )
            taken |= {rel, rel + ".gz"}
            dirs |= parents
            rels.append(rel)
        held = {d.path: d.sha256 for d in state.deltas()}
        snap = state.get("snapshot_path")
        if snap:
            held[snap] = bytes.fromhex(state.get("snapshot_hash") or "")
        for i, ((uri, digest), rel) in enumerate(zip(listed, rels, strict=True)):
            if rel in held and held[rel] != digest.digest:
                if i > 0:
                    # A delta rewritten under its name (rrdp-checklist (c)14): the planner takes
                    # the snapshot, and we stop listing deltas at this one (never replaced).
                    log.warning(
                        "upstream changed a delta we serve: %s",
                        uri.uri,
                        extra={"reason": Reason.SYNC_FILE_CHANGED},
                    )
                    self.changed_names.add(rel)
                    continue
                raise RemoteProtocolError(
                    Reason.SYNC_FILE_CHANGED,
                    "the snapshot we serve changed content under the same name (RFC 9697)",
                    uri=uri.uri,
                )

    # ------------------------------------------------------------------ staging RRDP files

    def stage(
        self,
        uri: HttpsUri,
        expected: Sha256,
        kind: FileKind,
        session: SessionId,
        serial: int,
        on_event: Callable[[PublishElement | WithdrawElement], None] | None,
        *,
        parse: bool = True,
    ) -> _Staged:
        """Stream one upstream file into a staging file (+ .gz), parsing and hashing it.

        From a local upstream directory on the same filesystem the file (and its ``.gz``
        sibling) is hard-linked instead of copied: upstream files are immutable (RFC 9697), so
        only reading them for the hash check remains.  A ``.gz`` sibling is used only when its
        gzip trailer (CRC-32 and size) matches the verified file; otherwise we compress our own.
        """
        rel = relative_to_base(uri, self.base)
        staging = self.o.rrdp_dir / f"{TMP_PREFIX}staging"
        staging.mkdir(exist_ok=True)
        token = secrets.token_hex(6)
        tmp, tmp_gz = staging / token, staging / f"{token}.gz"
        parser = (
            RrdpParser(kind, limits=self.o.limits, expected_session=session, expected_serial=serial)
            if parse
            else None
        )
        upstream = self.o.upstream
        keep = self.o.rrdp_output
        linked = (
            keep
            and self.o.link_local
            and isinstance(upstream, DirUpstream)
            and upstream.link(rel, tmp)
        )
        gz_linked = (
            linked and isinstance(upstream, DirUpstream) and upstream.link(rel + ".gz", tmp_gz)
        )
        source: Upstream = DirUpstream(staging) if linked else upstream
        hasher = hashlib.sha256()
        size = crc = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = -1 if linked or not keep else os.open(tmp, flags, 0o644)
        gz = -1 if gz_linked or not keep else os.open(tmp_gz, flags, 0o644)
        comp = None
        #: The server sent gzip: keep its bytes as our .gz (checked by its trailer below).
        passthrough = False
        done = False
        try:
            with source.open(
                token if linked else rel,
                max_size=self.o.limits.max_rrdp_file_size,
                deadline=self.deadline,
            ) as f:
                if keep and not gz_linked:
                    if f.content_encoding in ("gzip", "x-gzip"):
                        passthrough = True
                        f.raw_sink = functools.partial(write_all, gz)
                    else:
                        comp = isal_zlib.compressobj(self.o.gzip_level, isal_zlib.DEFLATED, 31)
                for chunk in f.chunks():
                    if time.monotonic() > self.deadline:
                        raise RemoteProtocolError(
                            Reason.HTTP_TIMEOUT,
                            "the run took too long",
                            uri=uri.uri,
                            limit="sync_run_deadline",
                        )
                    size += len(chunk)
                    if fd >= 0:
                        write_all(fd, chunk)
                    if comp is not None:
                        write_all(gz, comp.compress(chunk))
                    elif keep:
                        crc = zlib.crc32(chunk, crc)
                    if parser is not None:
                        parser.feed(chunk)
                        self._drain(parser, on_event)
                    else:
                        hasher.update(chunk)
                    self.progress(kind.value, size, 0)
                if not linked:
                    self.fetched += f.wire_bytes
            if comp is not None:
                write_all(gz, comp.flush())
            if parser is not None:
                parser.close()
                self._drain(parser, on_event)
                digest = parser.sha256
            else:
                digest = Sha256(hasher.digest())
            if digest != expected:
                raise IntegrityError(
                    Reason.HASH_MISMATCH,
                    f"{kind.value} hash differs from the notification's",
                    uri=uri.uri,
                )
            # A linked sibling is fully decoded once (a damaged one must never be served); the
            # gzip we were sent was decoded already, its trailer names what it decoded to.
            usable = not keep or (
                _gzip_verified(tmp_gz, crc, size)
                if gz_linked
                else _gzip_trailer_matches(tmp_gz, crc, size)
            )
            if (gz_linked or passthrough) and not usable:
                # Several gzip members, or a sibling that belongs to another file.
                log.info(
                    "upstream gzip form of %s not usable as is; compressing our own",
                    rel,
                    extra={"reason": Reason.SYNC_FILE_CHANGED},
                )
                tmp_gz.unlink()
                _gzip_file(tmp, tmp_gz, self.o.gzip_level)
            done = True
        finally:
            if fd >= 0:
                os.close(fd)
            if gz >= 0:
                os.close(gz)
            if not done:
                tmp.unlink(missing_ok=True)
                tmp_gz.unlink(missing_ok=True)
        staged = _Staged(rel, tmp, tmp_gz, digest, size)
        self.staged.append(staged)
        return staged

    @staticmethod
    def _drain(
        parser: RrdpParser, on_event: Callable[[PublishElement | WithdrawElement], None] | None
    ) -> None:
        while (event := parser.next_event()) is not NEED_DATA:
            if on_event is not None and isinstance(event, (PublishElement, WithdrawElement)):
                on_event(event)

    def place_staged(self, state: State) -> None:
        """Move verified files to their public paths (still unreferenced: invisible)."""
        if not self.o.rrdp_output:
            return
        for s in self.staged:
            final = self.o.rrdp_dir / s.rel
            if not _may_place(final, s.tmp, s.sha256):
                # Still on disk in its grace period, so clients may fetch it: never replaced.
                raise RemoteProtocolError(
                    Reason.SYNC_FILE_CHANGED,
                    "a file we still serve changed content under the same name (RFC 9697)",
                    path=s.rel,
                )
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(s.tmp, final)
                os.replace(s.tmp_gz, final.with_name(final.name + ".gz"))
            except OSError as exc:
                # A name that clashes with a file or directory still served (in its grace).
                raise StorageError(
                    Reason.SYNC_NAME_CLASH, f"cannot place: {exc.strerror}", path=s.rel
                ) from exc
            state.forget_retired(s.rel)
            state.forget_retired(s.rel + ".gz")

    def discard_staged(self) -> None:
        for s in self.staged:
            s.tmp.unlink(missing_ok=True)
            s.tmp_gz.unlink(missing_ok=True)
        self.staged.clear()

    # ------------------------------------------------------------------ rsync trees

    def pick_tree(self, state: State, fresh: bool) -> tuple[TreeWriter | None, int]:
        """No tree (rsync disabled), a fresh one linking every unchanged object from
        ``current`` (snapshot), or one of the ring (:func:`~rpkirepo.publish.served.pick_tree`)."""
        if not self.o.rsync_enabled:
            return None, -1
        self.revisions.mkdir(parents=True, exist_ok=True)
        current = [s for s in state.slots() if s.retired_at is None]
        link_source = self.revisions / current[0].name if current else None
        if fresh:
            return TreeWriter.new_tree(self.revisions, "", link_source), -1
        return pick_tree(
            state,
            self.revisions,
            "",
            link_source,
            now=self.now,
            grace=self.o.cleanup_after,
            max_revisions=self.o.rsync_max_revisions,
        )

    def bring_forward(self, state: State, tree: TreeWriter, base_serial: int) -> None:
        """Make ``tree`` hold the current revision: link everything (fresh tree) or replay the
        change log after ``base_serial`` (ring tree)."""
        if base_serial < 0:
            # Streamed from SQLite: a million paths never sit in memory at once.
            conn = state.connection
            n = conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
            for i, (path,) in enumerate(conn.execute("SELECT path FROM objects")):
                tree.link(path)
                if i % 8192 == 0:
                    self.progress("tree", i, n)
            tree.fresh = False  # the deltas now replace files that exist
            return
        final: dict[str, bytes | None] = {}
        for _serial, path, sha in state.changes_after(base_serial):
            final[path] = sha
        for path in sorted(p for p, sha in final.items() if sha is None):
            tree.remove(path)
        for path, sha in final.items():
            if sha is not None:
                tree.link(path)

    # ------------------------------------------------------------------ step 6: apply

    def apply_deltas(self, state: State, plan: UpdatePlan, session: SessionId) -> TreeWriter | None:
        """Apply ``plan.deltas`` in a transaction left open for the commit point."""
        tree, base_serial = self.pick_tree(state, fresh=False)
        state.begin()
        stats = {"added": 0, "modified": 0, "removed": 0}
        changes: dict[str, bytes | None] = {}
        conn = state.connection
        room = (
            self.o.limits.max_repository_objects
            - conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        )
        try:
            if tree is not None:
                self.bring_forward(state, tree, base_serial)
            for ref in plan.deltas:

                def on_event(
                    ev: PublishElement | WithdrawElement, serial: int = ref.serial
                ) -> None:
                    path = self.key(ev.uri, state)
                    row = conn.execute(
                        "SELECT sha256 FROM objects WHERE path=?", (path,)
                    ).fetchone()
                    have = bytes(row[0]) if row is not None else None
                    if isinstance(ev, WithdrawElement):
                        if have is None or have != ev.hash.digest:
                            # rrdp-checklist (b)15, (c)22: RFC 8182 §3.4.2.
                            raise _DeltaMismatch(
                                IntegrityError(
                                    Reason.OBJECT_MISSING if have is None else Reason.HASH_MISMATCH,
                                    "withdraw of an object we do not hold with that hash",
                                    uri=ev.uri.uri,
                                    serial=serial,
                                )
                            )
                        conn.execute("DELETE FROM objects WHERE path=?", (path,))
                        changes[path] = None
                        stats["removed"] += 1
                        if tree is not None:
                            tree.remove(path)
                        return
                    expected = ev.hash.digest if ev.hash is not None else None
                    if have != expected:
                        # (b)15-16, (c)22-23: a replace of what we lack or with the wrong hash, or
                        # a new object over one we hold.
                        if expected is None:
                            reason = Reason.OBJECT_ALREADY_PRESENT
                        elif have is None:
                            reason = Reason.OBJECT_MISSING
                        else:
                            reason = Reason.HASH_MISMATCH
                        raise _DeltaMismatch(
                            IntegrityError(
                                reason,
                                "publish does not match the object we hold",
                                uri=ev.uri.uri,
                                serial=serial,
                            )
                        )
                    if have is None and stats["added"] - stats["removed"] >= room:
                        raise LimitExceeded(
                            Reason.TOO_MANY_OBJECTS,
                            "the deltas grow the repository past the object limit",
                            limit="max_repository_objects",
                        )
                    sha = Sha256.of(ev.data).digest
                    mtime = self.mtime(ev.data, path)
                    conn.execute(
                        "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,x'',0)",
                        (path, sha, len(ev.data), mtime),
                    )
                    changes[path] = sha
                    stats["modified" if have is not None else "added"] += 1
                    if tree is not None:
                        tree.write(path, ev.data, mtime)

                try:
                    self.stage(ref.uri, ref.hash, FileKind.DELTA, session, ref.serial, on_event)
                except (StorageError, LocalProtocolError, ConfigError):
                    raise  # our side failed: no snapshot would do better
                except RpkiRepoError as exc:
                    # Anything wrong with the delta itself (its hash, its form, a limit, its
                    # transfer): take the snapshot (rrdp-checklist (b)20).
                    raise _DeltaMismatch(exc) from exc
            state.log_changes(plan.deltas[-1].serial, changes.items())
        except BaseException:
            state.rollback()
            if tree is not None:
                remove_tree(tree.root)
            raise
        self.stats = stats
        return tree

    def apply_snapshot(self, state: State, notification: NotificationFile) -> TreeWriter | None:
        """Stream the snapshot into a fresh tree (unchanged objects linked from ``current``)."""
        tree, _ = self.pick_tree(state, fresh=True)
        conn = state.connection
        state.begin()
        stats = {"added": 0, "modified": 0, "removed": 0}
        writer: BackgroundTree | None = None
        try:
            _create_incoming(conn)
            batch: list[tuple[str, bytes, bytes]] = []
            count = 0
            if tree is not None:
                # The helper finds each new object's mtime (RFC 9589) where it writes the file,
                # on the other core; the rows get theirs when it is done (``seq``).
                writer = BackgroundTree(tree, rule=MtimeRule(int(self.now), self.o.limits))

            def flush() -> None:
                nonlocal count
                old = state.rows(p for p, _, _ in batch)
                rows: list[tuple[str, bytes, int, int, int | None]] = []
                for path, sha, data in batch:
                    row = old.get(path)
                    if row is not None and bytes(row.sha256) == sha:
                        # The same bytes under the same name: the same time, kept (an object
                        # without a usable time keeps the one it was first given).
                        if writer is not None:
                            if writer.tree.link_source is not None:
                                writer.link(path)
                            else:
                                writer.write(path, data, row.mtime)
                        rows.append((path, sha, len(data), row.mtime, None))
                        continue
                    stats["modified" if row is not None else "added"] += 1
                    if writer is not None:
                        rows.append((path, sha, len(data), 0, writer.write_timed(path, data)))
                    else:
                        rows.append((path, sha, len(data), self.mtime(data, path), None))
                conn.executemany("INSERT INTO incoming VALUES (?,?,?,?,?)", rows)
                count += len(batch)
                batch.clear()

            cap = self.o.limits.max_repository_objects

            def on_event(ev: PublishElement | WithdrawElement) -> None:
                assert isinstance(ev, PublishElement)  # the parser refuses withdraws here
                if count + len(batch) >= cap:
                    raise LimitExceeded(
                        Reason.TOO_MANY_OBJECTS,
                        "the snapshot holds more objects than allowed",
                        limit="max_repository_objects",
                    )
                batch.append((self.key(ev.uri, state), Sha256.of(ev.data).digest, ev.data))
                if len(batch) >= BATCH:
                    flush()

            self.stage(
                notification.snapshot.uri,
                notification.snapshot.hash,
                FileKind.SNAPSHOT,
                notification.session_id,
                notification.serial,
                on_event,
            )
            flush()
            if writer is not None:
                writer.close()
                self.take_times(conn, writer)
            old_count = conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
            kept = conn.execute(
                "SELECT COUNT(*) FROM objects JOIN temp.incoming USING (path)"
            ).fetchone()[0]
            removed = old_count - kept
            stats["removed"] = removed
            self.check_shrink(old_count, removed, count)
            _objects_from_incoming(conn)
            # Trees of the old history can no longer be brought forward from the change log.
            state.prune_changes(2**63 - 1)
            # (The current tree too: it is retired at the commit point, never to be reused.)
            for s in state.slots():
                state.put_slot(SlotRow(s.name, 0, s.retired_at))
        except BaseException:
            state.rollback()
            if writer is not None:
                writer.abort()  # stop writing before the tree is removed
            if tree is not None:
                remove_tree(tree.root)
            raise
        self.stats = stats
        return tree

    @staticmethod
    def take_times(conn: sqlite3.Connection, writer: BackgroundTree) -> None:
        """Give the staged rows written with :meth:`BackgroundTree.write_timed` their mtimes."""
        conn.execute("CREATE TEMP TABLE times (seq INTEGER PRIMARY KEY, mtime INTEGER NOT NULL)")
        conn.executemany("INSERT INTO times VALUES (?,?)", enumerate(writer.times))
        conn.execute(
            "UPDATE temp.incoming SET mtime = (SELECT mtime FROM temp.times t "
            "WHERE t.seq = incoming.seq) WHERE seq IS NOT NULL"
        )
        conn.execute("DROP TABLE temp.times")
        if writer.fallbacks:  # one scan, however many objects had no usable time
            reasons = dict(writer.fallbacks)
            for path, seq in conn.execute(
                "SELECT path, seq FROM temp.incoming WHERE seq IS NOT NULL"
            ):
                if seq in reasons:
                    log.info(
                        "no time in %s, mtime is the sync time",
                        path,
                        extra={"reason": reasons[seq]},
                    )

    def check_shrink(self, held: int, removed: int, incoming: int) -> None:
        o = self.o
        if o.force or not o.rrdp_output or removed < SHRINK_GUARD_MIN or held == 0:
            return
        if removed > o.max_shrink * held:
            raise InputError(
                Reason.SYNC_SHRINK,
                f"the upstream snapshot drops {removed} of our {held} objects (keeps "
                f"{incoming}), more than {o.max_shrink:.0%}; use --force to accept it",
                removed=removed,
                held=held,
            )

    # ------------------------------------------------------------------ deltas we list

    def choose_deltas(
        self,
        state: State,
        notification: NotificationFile,
        applied: dict[int, _Staged],
        snap_size: int,
    ) -> list[DeltaRow]:
        """The contiguous tail of upstream's deltas that we list, newest first back until the
        size or count cap; fetched (parsed, hash-checked) when we do not hold them yet."""
        held = {d.serial: d for d in state.deltas()}
        cap = self.o.rrdp_max_deltas
        rows: list[DeltaRow] = []
        total = 0
        expected = notification.serial
        for ref in sorted(notification.deltas, key=lambda d: d.serial, reverse=True):
            if ref.serial != expected or (cap is not None and len(rows) >= cap):
                break
            expected -= 1
            rel = relative_to_base(ref.uri, self.base)
            if rel in self.changed_names:
                break
            have = held.get(ref.serial)
            if ref.serial in applied:
                staged = applied[ref.serial]
                size = staged.size
            elif have is not None and have.sha256 == ref.hash.digest and have.path == rel:
                size = have.size
            else:
                if total >= snap_size:
                    break
                on_disk = self.o.rrdp_dir / rel
                if on_disk.exists() and not _has_hash(on_disk, ref.hash):
                    # An older file of that name is still served (grace): never replaced.
                    log.warning(
                        "delta %d not listed: its name holds other content",
                        ref.serial,
                        extra={"reason": Reason.SYNC_FILE_CHANGED},
                    )
                    break
                try:
                    staged = self.stage(
                        ref.uri, ref.hash, FileKind.DELTA, notification.session_id, ref.serial, None
                    )
                except RpkiRepoError as exc:
                    log.warning(
                        "delta %d not listed: %s", ref.serial, exc, extra={"reason": exc.reason}
                    )
                    break
                size = staged.size
            if total + size > snap_size:
                break
            total += size
            rows.append(DeltaRow(ref.serial, rel, ref.hash.digest, size, self.now))
        rows.reverse()
        return rows

    # ------------------------------------------------------------------ step 8: notification

    def write_notification(self, state: State, *, only_if_different: bool = False) -> None:
        if not self.o.rrdp_output:
            return
        notification = self.notification_from_state(state)
        if notification is not None:
            write_notification(
                self.notification_path,
                notification_bytes(notification),
                self.o.gzip_level,
                only_if_different=only_if_different,
            )

    def collect_garbage(self, state: State) -> None:
        collect_garbage(state, self.o.rrdp_dir, self.revisions, self.now - self.o.cleanup_after)


def _create_incoming(conn: sqlite3.Connection) -> None:
    """The staging table a whole new object set (a snapshot, a fetched tree) is written to,
    inside the run's transaction, before it replaces ``objects``."""
    conn.execute("DROP TABLE IF EXISTS temp.incoming")
    conn.execute(
        "CREATE TEMP TABLE incoming (path TEXT PRIMARY KEY, sha256 BLOB NOT NULL, "
        "size INTEGER NOT NULL, mtime INTEGER NOT NULL, seq INTEGER)"
    )


def _objects_from_incoming(conn: sqlite3.Connection) -> None:
    """Replace ``objects`` with the staging table (still inside the transaction)."""
    conn.execute("DELETE FROM objects")
    conn.execute("INSERT INTO objects SELECT path, sha256, size, mtime, x'', 0 FROM temp.incoming")
    conn.execute("DROP TABLE temp.incoming")


def _may_place(existing: Path, staged: Path, digest: Sha256) -> bool:
    """True when nothing is at ``existing``, or it is the staged file itself (a hard link to the
    same inode), or holds the same bytes: placing the staged file there changes nothing."""
    try:
        st = os.lstat(existing)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    here = os.stat(staged)
    if (st.st_ino, st.st_dev) == (here.st_ino, here.st_dev):
        return True
    return _has_hash(existing, digest)


def _has_hash(path: Path, digest: Sha256) -> bool:
    """Whether the regular file at ``path`` has this SHA-256 (read only when a name upstream
    reused is still on disk: rare)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return False
    return h.digest() == digest.digest


def _gzip_verified(path: Path, crc: int, size: int) -> bool:
    """Whether ``path`` is one gzip member that decodes to ``size`` bytes with CRC-32 ``crc``
    (zlib checks the member's own CRC against what it decoded)."""
    if not _gzip_trailer_matches(path, crc, size):
        return False
    z = isal_zlib.decompressobj(31)
    total = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                while chunk:
                    total += len(z.decompress(chunk, 1 << 22))
                    chunk = z.unconsumed_tail
            total += len(z.flush())
    except Exception:  # OSError, or isal's IsalError (its stubs do not type it as one)
        return False
    return z.eof and not z.unused_data and total == size


def _gzip_trailer_matches(path: Path, crc: int, size: int) -> bool:
    """Whether ``path`` is a gzip member whose trailer names this CRC-32 and size (RFC 1952)."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(-8, os.SEEK_END)
            trailer = f.read(8)
    except OSError:
        return False
    return head == b"\x1f\x8b\x08" and trailer == struct.pack("<II", crc, size & 0xFFFFFFFF)


def _gzip_file(src: Path, dst: Path, level: int) -> None:
    comp = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                write_all(fd, comp.compress(chunk))
        write_all(fd, comp.flush())
    finally:
        os.close(fd)


def sync_once(opts: SyncOptions, progress: Progress = _no_progress) -> SyncResult:
    """Run the recipe once.  Raises :class:`RpkiRepoError` subclasses; the last good state
    stays served whatever fails."""
    old_umask = os.umask(0o022)
    try:
        for d in (opts.state_dir, opts.rrdp_dir, opts.rsync_dir):
            os.makedirs(d, mode=0o755, exist_ok=True)
        with DirLock(opts.state_dir):
            run = _Run(opts, progress)
            state = run.open_state()
            try:
                return _sync_locked(run, state)
            except RpkiRepoError as exc:
                _record_attempt(state, run, exc)
                raise
            finally:
                run.discard_staged()
                state.close()
    finally:
        os.umask(old_umask)


#: How a builder reports one regular file it put in an adopted tree: ``(path, size, mtime,
#: sha256)``, the path relative to the directory it declared with :meth:`TreeFiles.report`, the
#: mtime in whole seconds, and the SHA-256 of its bytes, or None for "a hard link (or copy) of
#: the current tree's file at the same path".
FileReport = Callable[[str, int, int, bytes | None], None]

#: The placeholder ``sha256`` of a reported link until its row is resolved (never a digest).
_UNRESOLVED: Final = b""


class TreeFiles:
    """What the builder of an adopted tree says it put there, so that :func:`adopt_tree` need
    not read the tree back (a whole repository: seconds per 100k files).

    :meth:`report` declares a directory *covered*: every regular file below it will be
    reported, through the function it returns.  A file reported with its SHA-256 gets that row.
    A file reported with None is a link of the current tree's file at the same path, which the
    state already describes: it gets the state's row when that row has the reported size and
    mtime, and is hashed otherwise.  Files outside every covered directory are hashed when the
    tree is checked (:meth:`check`), as every file was before builders reported.  Rows go to
    ``temp.incoming`` in batches of ``BATCH`` (so memory stays flat at any size), from the thread
    that called :func:`adopt_tree`: the one SQLite allows on the state's connection.  The object
    cap applies as files are reported, so a tree over it is refused before it is complete.
    """

    def __init__(self, conn: sqlite3.Connection, cap: int) -> None:
        self._conn = conn
        self._cap = cap
        self._batch: list[tuple[str, bytes, int, int]] = []
        #: Directories (relative to the root, '/'-separated, '' for the root) whose files are
        #: all reported.
        self.covered: set[str] = set()
        #: Files reported, and the sum of their paths' ``hash()``: checked against the tree.
        self.reported = 0
        self._names = 0
        #: Files found outside the covered directories (hashed by :meth:`check`).
        self.found = 0

    @property
    def count(self) -> int:
        return self.reported + self.found

    def report(self, prefix: str) -> FileReport:
        """Cover ``prefix`` (a relative directory, '' for the whole tree) and return the
        function that reports its files, by their paths below it."""
        if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ValueError(f"not a relative directory: {prefix!r}")
        self.covered.add(prefix)
        batch = self._batch
        head = f"{prefix}/" if prefix else ""

        def add(path: str, size: int, mtime: int, sha256: bytes | None) -> None:
            full = head + path
            self.reported += 1
            self._names += hash(full)
            if self.reported + self.found > self._cap:
                raise _too_many()
            batch.append((full, _UNRESOLVED if sha256 is None else sha256, size, mtime))
            if len(batch) >= BATCH:
                self.flush()

        return add

    def flush(self) -> None:
        """Write the waiting rows: in their own small transaction (on the temporary database
        only) while the tree is being built, in the run's once it has begun."""
        if not self._batch:
            return
        conn = self._conn
        own = not conn.in_transaction
        try:
            if own:
                conn.execute("BEGIN")
            conn.executemany("INSERT INTO temp.incoming VALUES (?,?,?,?,NULL)", self._batch)
            if own:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if own and conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise StorageError(
                    Reason.STORAGE_UNEXPECTED, "a file of the new tree was reported twice"
                ) from None
            raise StorageError(
                Reason.STORAGE_IO, f"cannot stage the new tree's rows: {exc}"
            ) from exc
        self._batch.clear()

    def check(self, root: Path) -> None:
        """Walk the new tree without reading it (entry types from the directory listing, one
        ``lstat`` only where the filesystem does not give them): every entry must be a
        directory or a regular file, and the files below covered directories must be exactly
        the reported ones (their number and the sum of their paths' hashes); other files are
        hashed here."""
        seen = names = 0
        stack = [("", "" in self.covered)]
        while stack:
            rel, covered = stack.pop()
            try:
                listing = os.scandir(os.path.join(root, rel))
            except OSError as exc:
                raise StorageError(
                    Reason.STORAGE_IO, f"cannot list the new tree: {exc}", path=rel
                ) from None
            with listing as it:
                for entry in it:
                    path = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((path, covered or path in self.covered))
                    elif not entry.is_file(follow_symlinks=False):
                        raise StorageError(
                            Reason.STORAGE_UNEXPECTED,
                            "not a regular file in a fetched tree",
                            path=entry.path,
                        )
                    elif covered:
                        seen += 1
                        names += hash(path)
                    else:
                        self._add_found(root, path)
        if (seen, names) != (self.reported, self._names):
            raise StorageError(
                Reason.STORAGE_UNEXPECTED,
                "the new tree does not hold exactly the files reported",
                path=str(root),
                found=seen,
                reported=self.reported,
            )

    def _add_found(self, root: Path, path: str) -> None:
        self.found += 1
        if self.reported + self.found > self._cap:
            raise _too_many()
        digest, size, mtime = _hash_file(root, path)
        self._batch.append((path, digest, size, mtime))
        if len(self._batch) >= BATCH:
            self.flush()

    def resolve(self, root: Path) -> None:
        """Inside the run's transaction, before the state's rows are replaced: give each
        reported link the state's row for its path, or hash it when there is no row with its
        size and mtime (the state and the current tree disagree: rare, and safe)."""
        self.flush()
        conn = self._conn
        conn.execute(
            "UPDATE temp.incoming SET sha256 = COALESCE((SELECT o.sha256 FROM objects o "
            "WHERE o.path = incoming.path AND o.size = incoming.size "
            "AND o.mtime = incoming.mtime), sha256) WHERE sha256 = ?",
            (_UNRESOLVED,),
        )
        last = ""
        while True:
            paths = [
                p
                for (p,) in conn.execute(
                    "SELECT path FROM temp.incoming WHERE path > ? AND sha256 = ? "
                    "ORDER BY path LIMIT ?",
                    (last, _UNRESOLVED, BATCH),
                )
            ]
            if not paths:
                return
            log.info("%d linked files not in the state as they are: hashed", len(paths))
            rows = []
            for p in paths:
                digest, size, mtime = _hash_file(root, p)
                rows.append((digest, size, mtime, p))
            conn.executemany(
                "UPDATE temp.incoming SET sha256 = ?, size = ?, mtime = ? WHERE path = ?", rows
            )
            last = paths[-1]


def _too_many() -> LimitExceeded:
    return LimitExceeded(
        Reason.TOO_MANY_OBJECTS,
        "the fetched tree holds more objects than allowed",
        limit="max_repository_objects",
    )


def _hash_file(root: Path, path: str) -> tuple[bytes, int, int]:
    """(SHA-256, size, mtime) of the regular file ``root/path``, never through a final
    symlink."""
    full = os.path.join(root, path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(
            Reason.STORAGE_UNEXPECTED, f"cannot read a file of the new tree: {exc}", path=full
        ) from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(
                Reason.STORAGE_UNEXPECTED, "not a regular file in a fetched tree", path=full
            )
        digest = hashlib.file_digest(f, "sha256").digest()
    return digest, st.st_size, st.st_mtime_ns // 1_000_000_000


def adopt_tree(
    opts: SyncOptions, build: Callable[[Path, Path | None, TreeFiles], None]
) -> SyncResult:
    """Make a tree built outside RRDP (``rpkirepo fetch``'s rsync fallback) the current one.

    Under the lock, after the usual recovery: ``build(root, current, files)`` fills a fresh
    directory ``root`` (paths as the store lays them out: ``host/module/path``), typically
    linking what it still finds unchanged in ``current`` (the current tree, or None), and
    reports what it put there through ``files`` (:class:`TreeFiles`).  The tree is then checked
    against the reports (a listing, no reads; unreported files are hashed), flushed to disk, and
    its rows replace the state's; the RRDP session is forgotten (the content no longer matches
    any upstream serial, so the next RRDP run takes the snapshot), and the tree becomes current
    at the same commit point as an RRDP update.  Any failure leaves the last good tree current.
    """
    if opts.rrdp_output or not opts.rsync_enabled:
        raise ConfigError(Reason.CONFIG_INVALID, "adopt_tree is for object stores only")
    old_umask = os.umask(0o022)
    try:
        for d in (opts.state_dir, opts.rrdp_dir, opts.rsync_dir):
            os.makedirs(d, mode=0o755, exist_ok=True)
        with DirLock(opts.state_dir):
            run = _Run(opts, _no_progress)
            state = run.open_state()
            try:
                result = _adopt_locked(run, state, build)
            except RpkiRepoError as exc:
                _record_attempt(state, run, exc)
                raise
            finally:
                state.close()
            return result
    finally:
        os.umask(old_umask)


def _adopt_locked(
    run: _Run, state: State, build: Callable[[Path, Path | None, TreeFiles], None]
) -> SyncResult:
    run.recover(state)
    run.revisions.mkdir(parents=True, exist_ok=True)
    current = [s for s in state.slots() if s.retired_at is None]
    current_root = run.revisions / current[0].name if current else None
    token = secrets.token_hex(6)
    root = run.revisions / f"{TMP_PREFIX}{token}"
    os.mkdir(root, 0o755)
    conn = state.connection
    name = f"rsync-{token}"
    try:
        # The rows are staged while the tree is built (a temporary table: nothing of the
        # state changes before the transaction below).
        _create_incoming(conn)
        files = TreeFiles(conn, run.o.limits.max_repository_objects)
        build(root, current_root, files)
        files.check(root)
        sync_filesystem(root)
        state.begin()
        files.resolve(root)
        count = files.count
        held = conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        kept, modified = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(o.sha256 != i.sha256), 0) "
            "FROM objects o JOIN temp.incoming i USING (path)"
        ).fetchone()
        run.forget_session(state)
        _objects_from_incoming(conn)
        os.rename(root, run.revisions / name)
        root = run.revisions / name
        fsync_dir(run.revisions)
        state.put_slot(SlotRow(name, 0, None))
        state.commit()  # ---- the commit point ----
    except BaseException:
        if state.connection.in_transaction:
            state.rollback()
        if root.name.startswith(TMP_PREFIX):
            remove_tree(root)
        raise
    replace_symlink(run.current_link, f"revisions/{name}")
    run.collect_garbage(state)
    _record_attempt(state, run, None)
    return SyncResult(
        "rsync",
        None,
        "",
        0,
        objects=count,
        added=count - kept,
        modified=modified,
        removed=held - kept,
    )


def _record_attempt(state: State, run: _Run, exc: RpkiRepoError | None) -> None:
    with contextlib.suppress(sqlite3.Error, StorageError):
        if state.connection.in_transaction:
            state.rollback()
        state.begin()
        state.set("last_attempt", f"{run.now:.0f}")
        if exc is None:
            state.set("last_success", f"{run.now:.0f}")
            state.set("last_error", "")
            state.set("last_reason", "")
        else:
            state.set("last_error", str(exc))
            state.set("last_reason", exc.reason.value)
        state.commit()


def _sync_locked(run: _Run, state: State) -> SyncResult:
    o = run.o
    run.recover(state)
    run.lap("recover")
    notification, validators = run.fetch_notification(state)
    run.lap("notification")
    held = run.session(state)
    if notification is None:
        run.collect_garbage(state)
        _record_attempt(state, run, None)
        assert held is not None
        log.info("notification not modified", extra={"reason": "not-modified"})
        return SyncResult(
            "not-modified", None, held[0], held[1], bytes_fetched=run.fetched, timings=run.timings
        )
    local = None
    if held is not None:
        hashes = {d.serial: Sha256(d.sha256) for d in state.deltas()}
        local = LocalRrdpState(SessionId(held[0]), held[1], hashes)
    plan = plan_update(local, notification, limits=o.limits)
    log.info(
        "upstream %s serial %d: %s",
        notification.session_id,
        notification.serial,
        plan.action.value,
        extra={"reason": plan.reason.value},
    )
    if plan.action is PlanAction.UP_TO_DATE:
        state.begin()
        state.set("etag", validators.etag or "")
        state.set("last_modified", validators.last_modified or "")
        state.commit()
        run.collect_garbage(state)
        _record_attempt(state, run, None)
        return SyncResult(
            "up-to-date",
            plan.reason,
            str(notification.session_id),
            notification.serial,
            bytes_fetched=run.fetched,
            timings=run.timings,
        )
    outcome, reason = plan.action.value, plan.reason
    tree: TreeWriter | None = None
    applied: dict[int, _Staged] = {}
    if plan.action is PlanAction.DELTAS:
        try:
            tree = run.apply_deltas(state, plan, notification.session_id)
            applied = {
                ref.serial: staged for ref, staged in zip(plan.deltas, run.staged, strict=True)
            }
        except _DeltaMismatch as exc:
            log.warning(
                "deltas unusable (%s), taking the snapshot",
                exc.error,
                extra={"reason": exc.error.reason},
            )
            run.discard_staged()
            outcome, reason = "snapshot", exc.error.reason
    run.lap("deltas")
    snap: _Staged | None = None
    if outcome == "snapshot":
        tree = run.apply_snapshot(state, notification)
        snap = run.staged[0]
    elif o.rrdp_output:
        snap = run.stage(
            notification.snapshot.uri,
            notification.snapshot.hash,
            FileKind.SNAPSHOT,
            notification.session_id,
            notification.serial,
            None,
            parse=False,
        )
    run.lap("snapshot")
    try:
        if o.rrdp_output:
            assert snap is not None
            rows = run.choose_deltas(state, notification, applied, snap.size)
        else:
            # A store lists nothing; it remembers upstream's (serial, hash) pairs for the
            # desync check (RFC 9697, rrdp-checklist (b)11).
            rows = [DeltaRow(d.serial, "", d.hash.digest, 0, run.now) for d in notification.deltas]
        run.lap("list-deltas")
        if tree is not None:
            tree.finish()
        run.place_staged(state)
        sync_filesystem(o.rrdp_dir)
        if tree is not None:
            sync_filesystem(o.rsync_dir)
        run.lap("sync")
        # ---- everything below up to commit() is one transaction ----
        old_referenced = set(run.referenced(state))
        for d in state.deltas():
            state.drop_delta(d.serial)
        for r in rows:
            state.add_delta(r)
        state.set("session", str(notification.session_id))
        state.set("serial", notification.serial)
        if o.rrdp_output:
            assert snap is not None
            state.set("snapshot_path", snap.rel)
            state.set("snapshot_hash", snap.sha256.digest.hex())
            state.set("snapshot_size", snap.size)
        state.set("etag", validators.etag or "")
        state.set("last_modified", validators.last_modified or "")
        for rel in old_referenced - set(run.referenced(state)):
            state.retire(rel, run.now)
        name = ""
        if tree is not None:
            name = (
                f"{str(notification.session_id)[:8]}-{notification.serial}-{secrets.token_hex(3)}"
            )
            tree.rename_to(run.revisions / name)
            fsync_dir(run.revisions)
            for s in state.slots():
                if s.retired_at is None:
                    state.put_slot(SlotRow(s.name, s.serial, run.now))
            state.put_slot(SlotRow(name, notification.serial, None))
        state.commit()  # ---- the commit point ----
        run.lap("commit")
    except BaseException:
        if state.connection.in_transaction:
            state.rollback()
        if tree is not None and tree.root.name.startswith(TMP_PREFIX):
            remove_tree(tree.root)
        raise
    if tree is not None:
        replace_symlink(run.current_link, f"revisions/{name}")
    if o.rrdp_notify_delay > 0:
        log.info("waiting %.0f s before the notification", o.rrdp_notify_delay)
        o.sleep(o.rrdp_notify_delay)
    run.write_notification(state)
    run.lap("publish")
    run.collect_garbage(state)
    run.lap("gc")
    _record_attempt(state, run, None)
    objects = state.connection.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    stats = run.stats
    log.info(
        "synced to serial %d by %s: +%d ~%d -%d objects, %d deltas listed",
        notification.serial,
        outcome,
        stats["added"],
        stats["modified"],
        stats["removed"],
        len(rows) if o.rrdp_output else 0,
        extra={"reason": reason.value},
    )
    return SyncResult(
        outcome,
        reason,
        str(notification.session_id),
        notification.serial,
        objects=objects,
        added=stats["added"],
        modified=stats["modified"],
        removed=stats["removed"],
        deltas_applied=len(applied),
        deltas_listed=len(rows) if o.rrdp_output else 0,
        bytes_fetched=run.fetched,
        timings=run.timings,
    )


def read_status(state_dir: Path) -> dict[str, str | int | None]:
    """What ``rpkirepo sync --status`` shows for one repository (read-only, no lock)."""
    db = state_dir / STATE_DB
    if not db.exists():
        return {"state": "never synced"}
    state = State.open_existing(db)
    try:
        out: dict[str, str | int | None] = {}
        for key in (
            "notification_uri",
            "session",
            "serial",
            "snapshot_path",
            "last_success",
            "last_attempt",
            "last_reason",
            "last_error",
        ):
            out[key] = state.get(key)
        out["objects"] = state.connection.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        out["deltas_listed"] = len(state.deltas())
        current = [s.name for s in state.slots() if s.retired_at is None]
        out["current_tree"] = current[0] if current else None
        out["trees"] = len(state.slots())
        out["files_in_grace"] = len(state.retired())
        return out
    finally:
        state.close()
