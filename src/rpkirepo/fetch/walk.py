"""The walk from trust anchors down the CA tree, as a relying party discovers repositories.

1. For each TAL, fetch the TA certificate (https URIs first, RFC 8630 §2.3; then rsync) and
   check that its key is the TAL's; the last good copy is kept under ``CACHE/ta/``.
2. A CA certificate's SIA names its repository: rpkiNotify (RRDP) and caRepository (rsync), and
   its manifest.  The repository key is the notification URI when there is one, else the rsync
   module (:class:`~rpkirepo.fetch.store.RepositoryKey`).  Each repository is updated once per
   run, in a thread pool (``concurrency``), RRDP first with rsync as the fallback; the CAs
   waiting for it are parked until it is done.
3. A CA is then read from its *own* store only (rrdp-checklist (b)19): its manifest, the files
   of its publication point (compared with the manifest: missing, extra, hash mismatch, the
   2013 analysis §3.4), and the CA certificates its manifest lists, which are followed.
4. Limits stop hostile trees: depth (``fetch_max_depth``), repositories per TAL
   (``fetch_max_repositories``), CAs per run (``fetch_max_cas``), a deadline per repository and
   one per run (Stalloris, endless chains: rrdp-checklist (c)31-32).  A repository not reached
   in time keeps its last good copy.
5. The output view ``CACHE/objects/HOST/MODULE`` is a directory of symlinks, one per rsync
   module, each into the current tree of the store that owns it (the first repository a CA bound
   it to); it is built beside the old one and swapped in with one symlink rename.

No signature or resource validation is done here: that is the validator's job.  The walk only
reads SIA pointers and manifest entries, so that what is fetched is what a validator would
fetch.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from asn1crypto import x509

from rpkirepo.errors import InputError, LimitExceeded, Reason, RpkiRepoError
from rpkirepo.fetch.store import RepositoryKey, Store, StoreUpdate
from rpkirepo.fetch.tal import TrustAnchorLocator
from rpkirepo.fsutil import TMP_PREFIX, DirLock, atomic_write, remove_tree, replace_symlink
from rpkirepo.httpget import HttpOptions, http_get, read_all
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.objects import (
    CaPointers,
    Certificate,
    ManifestEntries,
    ObjectKind,
    read_ca_pointers,
    read_manifest_entries,
    read_object,
)
from rpkirepo.sync.mirror import STATE_DB
from rpkirepo.uri import HttpsUri, RsyncUri, uri_to_relpath

__all__ = ["FetchOptions", "FetchReport", "PubPointReport", "TaReport", "run_fetch"]

log = logging.getLogger("rpkirepo.fetch")

Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# ---- options and report --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FetchOptions:
    cache: Path
    limits: Limits = DEFAULT_LIMITS
    http: HttpOptions = field(default_factory=HttpOptions)
    #: Repositories updated at the same time.
    concurrency: int = 4
    #: False: never RRDP (rsync only, for measurement or comparison).
    rrdp: bool = True
    #: Use the rsync binary (``--compare-dest``) instead of the native client.
    rsync_external: bool = False
    rsync_protocol: int = 31
    #: Seconds a store keeps a replaced tree (a validator may still be reading it).
    cleanup_after: float = 600.0


@dataclass(slots=True)
class TaReport:
    tal: str
    uri: str = ""
    #: https | rsync | cached | failed
    transport: str = "failed"
    reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PubPointReport:
    """Manifest consistency of one publication point (the 2013 analysis §3.4)."""

    ca: str
    ca_repository: str
    manifest: str
    repository: str
    depth: int
    manifest_number: str = ""
    files: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    hash_mismatch: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.extra or self.hash_mismatch or self.reasons)


@dataclass(slots=True)
class FetchReport:
    started: float
    seconds: float = 0.0
    tals: list[TaReport] = field(default_factory=list)
    repositories: list[StoreUpdate] = field(default_factory=list)
    publication_points: list[PubPointReport] = field(default_factory=list)
    #: Reasons that stopped part of the walk (limits, deadlines), with the URI concerned.
    refusals: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every TA and repository has a usable copy (fresh or last good)."""
        return all(t.transport != "failed" for t in self.tals) and all(
            r.transport != "none" for r in self.repositories
        )


# ---- the walk ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Ca:
    cert: CaPointers
    uri: str
    depth: int
    tal: str


@dataclass(frozen=True, slots=True)
class _Visit:
    """A CA accepted by :meth:`_Walk.add_ca`: its validated SIA and repository, to be read
    once that repository's update is done."""

    ca: _Ca
    repo: RsyncUri
    mft: RsyncUri
    key: RepositoryKey


#: Parse-cache entries held before they are written to walk.db in one statement.
_PARSE_CACHE_BATCH: Final = 4096
#: Stores with at most this many objects are indexed in one scan (see _index_objects).
_HELD_INDEX_ROWS: Final = 200_000
#: A parse cache of at most this many entries is read in one scan (~300 bytes an entry).
_HELD_PARSE_ROWS: Final = 100_000


class _ParseCache:
    """What the walk read from manifests and CA certificates, by the SHA-256 of the file.

    Content-addressed, so an entry can never be stale: a warm run reads only the objects that
    changed.  Entries not used by a run are dropped at its end (the cache holds one run's CAs).
    Lives in ``CACHE/walk.db``; a damaged file is replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = self._open()
        except sqlite3.DatabaseError:
            path.unlink(missing_ok=True)
            self.conn = self._open()
        self.used: set[bytes] = set()
        #: Entries parsed this run, written in one statement at :meth:`close`.
        self.new: dict[tuple[bytes, str], str] = {}
        #: Every entry, read in one scan when there are at most ``_HELD_PARSE_ROWS`` (a query
        #: per CA costs more than the scan); None: look each one up.
        self.held: dict[tuple[bytes, str], str] | None = self._load()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS parsed (sha256 BLOB PRIMARY KEY, kind TEXT NOT NULL, "
            "value TEXT NOT NULL)"
        )
        return conn

    def _load(self) -> dict[tuple[bytes, str], str] | None:
        try:
            (rows,) = self.conn.execute("SELECT COUNT(*) FROM parsed").fetchone()
            if rows > _HELD_PARSE_ROWS:
                return None
            rows = self.conn.execute("SELECT sha256, kind, value FROM parsed")
            return {(bytes(digest), kind): text for digest, kind, text in rows}
        except sqlite3.DatabaseError:
            return None

    def get(self, digest: bytes, kind: str) -> Any:
        text = self.new.get((digest, kind))
        if text is None and self.held is not None:
            text = self.held.get((digest, kind))
            if text is None:
                return None
        elif text is None:
            row = self.conn.execute(
                "SELECT value FROM parsed WHERE sha256=? AND kind=?", (digest, kind)
            ).fetchone()
            if row is None:
                return None
            text = row[0]
        self.used.add(digest)
        return json.loads(text)

    def put(self, digest: bytes, kind: str, value: object) -> None:
        self.new[(digest, kind)] = json.dumps(value)
        self.used.add(digest)
        if len(self.new) >= _PARSE_CACHE_BATCH:
            self._write()

    def _write(self) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO parsed VALUES (?,?,?)",
            ((digest, kind, text) for (digest, kind), text in self.new.items()),
        )
        self.new.clear()

    def close(self) -> None:
        self._write()
        conn = self.conn
        conn.execute("CREATE TEMP TABLE used (sha256 BLOB PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO used VALUES (?)", ((d,) for d in self.used))
        conn.execute("DELETE FROM parsed WHERE sha256 NOT IN (SELECT sha256 FROM used)")
        conn.commit()
        conn.close()


class _Walk:
    def __init__(self, opts: FetchOptions, progress: Progress) -> None:
        self.o = opts
        self.limits = opts.limits
        self.progress = progress
        self.report = FetchReport(time.time())
        self.run_deadline = time.monotonic() + opts.limits.fetch_run_deadline
        self.stores: dict[RepositoryKey, Store] = {}
        self.updates: dict[RepositoryKey, StoreUpdate] = {}
        #: Store -> the modules an rsync run has covered this run.
        self.rsynced: dict[RepositoryKey, set[str]] = {}
        self.pending: dict[cf.Future[StoreUpdate], RepositoryKey] = {}
        self.in_flight: set[RepositoryKey] = set()
        self.parked: dict[RepositoryKey, list[_Visit]] = {}
        self.ready: deque[_Visit] = deque()
        #: rsync module -> the repository whose store the output view links it to.
        self.module_owner: dict[str, RepositoryKey] = {}
        self.repos_per_tal: dict[str, set[RepositoryKey]] = {}
        self.seen: set[tuple[str, str]] = set()
        self.cas = 0
        self.parsed = _ParseCache(opts.cache / "walk.db")
        #: One read-only connection to each store's state, opened after its update.
        self.connections: dict[RepositoryKey, sqlite3.Connection] = {}
        #: Per store: directory -> {name: SHA-256} of every object, read in one scan (None: the
        #: store is too large for that, so each publication point is one range query).
        self.held_index: dict[RepositoryKey, dict[str, dict[str, bytes]] | None] = {}
        #: Per store: whether it has a current tree, asked once after each of its updates.
        self.copies: dict[RepositoryKey, bool] = {}
        self.manifest_numbers = self._load_manifest_numbers()
        self.pool = cf.ThreadPoolExecutor(
            max_workers=max(1, opts.concurrency), thread_name_prefix="fetch"
        )

    # ------------------------------------------------------------------ stores

    def store(self, key: RepositoryKey) -> Store:
        s = self.stores.get(key)
        if s is None:
            s = Store(
                self.o.cache,
                key,
                limits=self.limits,
                http=self.o.http,
                rsync_external=self.o.rsync_external,
                rsync_protocol=self.o.rsync_protocol,
                cleanup_after=self.o.cleanup_after,
            )
            self.stores[key] = s
        return s

    def _deadline(self) -> float:
        return min(self.run_deadline, time.monotonic() + self.limits.fetch_repository_deadline)

    def submit(self, key: RepositoryKey, *, rsync_modules: set[str] | None = None) -> None:
        store = self.store(key)
        if time.monotonic() >= self.run_deadline:
            rep = self.updates.get(key) or StoreUpdate(key, key.store_id)
            rep.reasons.append(Reason.FETCH_RUN_DEADLINE.value)
            if rep.transport == "none" and store.has_copy():
                rep.transport = "cached"
                rep.reasons.append(Reason.FETCH_STALE.value)
            self.updates[key] = rep
            self.release(key)
            return
        deadline = self._deadline()
        if rsync_modules is None:
            fut = self.pool.submit(store.update, deadline, rrdp=self.o.rrdp)
            self.rsynced[key] = set(store.modules)
        else:
            rep = self.updates[key]
            self.rsynced[key] |= rsync_modules

            def more() -> StoreUpdate:
                store.update_rsync(rep, rsync_modules, deadline)
                return rep

            fut = self.pool.submit(more)
        self.pending[fut] = key
        self.in_flight.add(key)

    def release(self, key: RepositoryKey) -> None:
        self.ready.extend(self.parked.pop(key, []))

    def wait_some(self) -> None:
        done, _ = cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
        for fut in done:
            key = self.pending.pop(fut)
            self.in_flight.discard(key)
            try:
                rep = fut.result()
            except RpkiRepoError as exc:  # pragma: no cover (Store.update never raises)
                rep = self.updates.get(key) or StoreUpdate(key, key.store_id)
                rep.reasons.append(exc.reason.value)
                rep.errors.append(str(exc))
            self.updates[key] = rep
            stale = self.connections.pop(key, None)
            if stale is not None:
                stale.close()
            self.held_index.pop(key, None)
            self.copies.pop(key, None)
            self.progress("repositories", len(self.updates), len(self.stores))
            self.release(key)

    # ------------------------------------------------------------------ CAs

    def refuse(self, reason: Reason, uri: str, detail: str) -> None:
        log.warning("%s: %s", uri, detail, extra={"reason": reason})
        self.report.refusals.append({"reason": reason.value, "uri": uri, "detail": detail})

    def add_ca(self, ca: _Ca) -> None:
        cert = ca.cert
        repo_uri = next((u for u in cert.ca_repository if u.startswith("rsync://")), None)
        mft_uri = next((u for u in cert.rpki_manifest if u.startswith("rsync://")), None)
        if repo_uri is None or mft_uri is None:
            self.refuse(Reason.FETCH_NO_REPOSITORY, ca.uri, "no rsync caRepository or manifest")
            return
        if (repo_uri, mft_uri) in self.seen:
            return  # the same publication point reached twice (or a loop)
        if ca.depth > self.limits.fetch_max_depth:
            self.refuse(Reason.FETCH_DEPTH, ca.uri, "CA chain deeper than fetch_max_depth")
            return
        if self.cas >= self.limits.fetch_max_cas:
            self.refuse(Reason.FETCH_TOO_MANY_CAS, ca.uri, "more CAs than fetch_max_cas")
            return
        try:
            repo = RsyncUri.parse(repo_uri, max_length=self.limits.max_uri_length)
            mft = RsyncUri.parse(mft_uri, max_length=self.limits.max_uri_length)
            notify = next(
                (
                    HttpsUri.parse(u, max_length=self.limits.max_uri_length)
                    for u in cert.rpki_notify
                    if u.startswith("https://")
                ),
                None,
            )
        except RpkiRepoError as exc:
            self.refuse(exc.reason, ca.uri, f"bad SIA URI: {exc}")
            return
        if not repo.is_directory:
            self.refuse(Reason.URI_SYNTAX, ca.uri, "caRepository is not a directory URI")
            return
        key = (
            RepositoryKey.for_notify(notify)
            if notify is not None and self.o.rrdp
            else RepositoryKey.for_module(repo)
        )
        seen_here = self.repos_per_tal.setdefault(ca.tal, set())
        if key not in seen_here and len(seen_here) >= self.limits.fetch_max_repositories:
            self.refuse(
                Reason.FETCH_TOO_MANY_REPOSITORIES, key.uri, "more than fetch_max_repositories"
            )
            return
        seen_here.add(key)
        self.seen.add((repo_uri, mft_uri))
        self.cas += 1
        module = repo.module_uri.uri
        store = self.store(key)
        store.modules.add(module)
        owner = self.module_owner.setdefault(module, key)
        if owner != key:
            self.refuse(
                Reason.FETCH_MODULE_CLAIMED,
                ca.uri,
                f"module {module} already belongs to repository {owner.uri}",
            )
        visit = _Visit(ca, repo, mft, key)
        if key in self.in_flight:
            self.parked.setdefault(key, []).append(visit)
        elif key in self.updates:
            rep = self.updates[key]
            if rep.transport != "rrdp" and module not in self.rsynced.get(key, set()):
                # RRDP failed this run: this module was not known when rsync ran.
                self.parked.setdefault(key, []).append(visit)
                self.submit(key, rsync_modules={module})
            else:
                self.ready.append(visit)
        else:
            self.parked.setdefault(key, []).append(visit)
            self.submit(key)

    def visit(self, visit: _Visit) -> None:
        """Read a CA's publication point from its own store; follow its child CAs."""
        ca, repo, mft, key = visit.ca, visit.repo, visit.mft, visit.key
        store = self.stores[key]
        pp = PubPointReport(ca.uri, repo.uri, mft.uri, key.uri, ca.depth)
        self.report.publication_points.append(pp)
        has_copy = self.copies.get(key)
        if has_copy is None:
            has_copy = self.copies[key] = store.has_copy()
        if not has_copy:
            pp.reasons.append(Reason.FETCH_NO_REPOSITORY.value)
            return
        held = self._held_files(store, repo)
        pp.files = len(held)
        if not mft.is_under(repo) or "/" in mft.relative_to(repo):
            pp.reasons.append(Reason.URI_OUTSIDE_BASE.value)
            return
        try:
            manifest = self._manifest(store, mft, held.get(mft.relative_to(repo)))
        except RpkiRepoError as exc:
            pp.reasons.append(exc.reason.value)
            return
        self._check_replay(pp, mft.uri, manifest.manifest_number)
        pp.manifest_number = f"{manifest.manifest_number:x}"
        listed = dict(manifest.files)
        mft_name = mft.relative_to(repo)
        pp.missing = sorted(n for n in listed if n not in held)
        pp.hash_mismatch = sorted(n for n, h in listed.items() if n in held and held[n] != h)
        pp.extra = sorted(n for n in held if n not in listed and n != mft_name)
        for name, digest in sorted(listed.items()):
            if not name.endswith(".cer") or held.get(name) != digest:
                continue
            child_uri = repo.join(name)
            cached = self.parsed.get(digest, "cer")
            if cached is not None:
                child = CaPointers(
                    ObjectKind(cached[0]), tuple(cached[1]), tuple(cached[2]), tuple(cached[3])
                )
            else:
                try:
                    data = _read_limited(store.path_of(child_uri), self.limits.max_object_size)
                    if hashlib.sha256(data).digest() != digest:
                        continue  # changed since the state was read: next run
                    child = read_ca_pointers(data, limits=self.limits)
                except RpkiRepoError as exc:
                    log.info("%s: %s", child_uri.uri, exc, extra={"reason": exc.reason})
                    continue
                self.parsed.put(
                    digest,
                    "cer",
                    [child.kind.value, child.ca_repository, child.rpki_manifest, child.rpki_notify],
                )
            if child.kind is ObjectKind.CA_CERTIFICATE:
                self.add_ca(_Ca(child, child_uri.uri, ca.depth + 1, ca.tal))

    def _manifest(self, store: Store, mft: RsyncUri, digest: bytes | None) -> ManifestEntries:
        if digest is None:
            raise InputError(Reason.FETCH_MANIFEST_MISSING, "manifest not fetched", uri=mft.uri)
        cached = self.parsed.get(digest, "mft")
        if cached is not None:
            return ManifestEntries(
                int(cached[0], 16), tuple((n, bytes.fromhex(h)) for n, h in cached[1])
            )
        try:
            data = _read_limited(store.path_of(mft), self.limits.max_object_size)
        except InputError as exc:
            raise InputError(Reason.FETCH_MANIFEST_MISSING, "manifest not fetched") from exc
        entries = read_manifest_entries(data, limits=self.limits)
        if hashlib.sha256(data).digest() == digest:
            self.parsed.put(
                digest,
                "mft",
                [f"{entries.manifest_number:x}", [[n, h.hex()] for n, h in entries.files]],
            )
        return entries

    def _held_files(self, store: Store, repo: RsyncUri) -> dict[str, bytes]:
        """name -> SHA-256 of the files directly in the publication point ``repo``, from the
        store's state (no file is read); one read-only connection per store and run."""
        conn = self.connections.get(store.key)
        if conn is None:
            db = store.root / "state" / STATE_DB
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
            except sqlite3.Error:
                return {}
            self.connections[store.key] = conn
        prefix = uri_to_relpath(repo) + "/"
        if store.key not in self.held_index:
            self.held_index[store.key] = _index_objects(conn)
        index = self.held_index[store.key]
        if index is not None:
            return index.get(prefix[:-1], {})
        hi = prefix[:-1] + chr(ord("/") + 1)
        out: dict[str, bytes] = {}
        try:
            for path, sha in conn.execute(
                "SELECT path, sha256 FROM objects WHERE path >= ? AND path < ?", (prefix, hi)
            ):
                name = path[len(prefix) :]
                if "/" not in name:
                    out[name] = bytes(sha)
        except sqlite3.Error:
            return {}
        return out

    def _check_replay(self, pp: PubPointReport, uri: str, number: int) -> None:
        """rrdp-checklist (c)34: a manifest number going backwards is a replay (RFC 9286 §4.2.1);
        reported, and the highest number seen is kept for the next run."""
        before = self.manifest_numbers.get(uri)
        if before is not None and number < before:
            pp.reasons.append(Reason.FETCH_MANIFEST_REPLAY.value)
            log.warning(
                "manifest number went back from %x to %x: %s",
                before,
                number,
                uri,
                extra={"reason": Reason.FETCH_MANIFEST_REPLAY},
            )
            return
        self.manifest_numbers[uri] = number

    def _load_manifest_numbers(self) -> dict[str, int]:
        path = self.o.cache / "manifest-numbers.json"
        try:
            raw = json.loads(path.read_text())
            return {str(k): int(v, 16) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def save_manifest_numbers(self) -> None:
        data = json.dumps({k: f"{v:x}" for k, v in sorted(self.manifest_numbers.items())})
        atomic_write(self.o.cache / "manifest-numbers.json", data.encode())

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            while self.ready or self.pending:
                while self.ready:
                    self.visit(self.ready.popleft())
                    self.progress("cas", len(self.report.publication_points), self.cas)
                if self.pending:
                    self.wait_some()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for conn in self.connections.values():
                conn.close()
            self.parsed.close()
        self.report.repositories = sorted(self.updates.values(), key=lambda r: r.key)


# ---- trust anchors -------------------------------------------------------------------------------
def _spki_of(data: bytes) -> bytes:
    try:
        cert = x509.Certificate.load(data, strict=True)
        return bytes(cert["tbs_certificate"]["subject_public_key_info"].dump())
    except (ValueError, TypeError) as exc:
        raise InputError(Reason.OBJECT_MALFORMED, "TA certificate unreadable") from exc


def fetch_ta(
    tal: TrustAnchorLocator, opts: FetchOptions, deadline: float
) -> tuple[CaPointers | None, TaReport]:
    """The TA certificate: from the first TAL URI that gives one with the TAL's key, else the
    last good copy; every attempt ends by ``deadline`` (a :func:`time.monotonic` value)."""
    rep = TaReport(tal.name)
    ta_dir = opts.cache / "ta"
    ta_dir.mkdir(parents=True, exist_ok=True)
    cached = ta_dir / f"{tal.name}.cer"
    limits = opts.limits
    for uri in tal.ordered_uris:
        try:
            if isinstance(uri, HttpsUri):
                with http_get(
                    uri.uri, options=opts.http, max_size=limits.max_object_size, deadline=deadline
                ) as r:
                    data = read_all(r)
                transport = "https"
            else:
                data = _rsync_one_file(uri, opts, deadline)
                transport = "rsync"
            if _spki_of(data) != tal.spki_der:
                raise InputError(
                    Reason.FETCH_TA_KEY_MISMATCH, "TA certificate key differs from the TAL's"
                )
            # The full reader once (the TA is one object a run), the walk's pointers from it.
            full = read_object(data, name=uri.uri.rsplit("/", 1)[-1], limits=limits)
            if not isinstance(full, Certificate) or full.kind is not ObjectKind.TA_CERTIFICATE:
                raise InputError(Reason.OBJECT_BAD_CONTENT_TYPE, "not a TA certificate")
            cert = read_ca_pointers(data, limits=limits)
        except RpkiRepoError as exc:
            log.warning("TA %s: %s", uri.uri, exc, extra={"reason": exc.reason})
            rep.reasons.append(exc.reason.value)
            rep.errors.append(f"{uri.uri}: {exc}")
            continue
        atomic_write(cached, data)
        rep.uri, rep.transport = uri.uri, transport
        return cert, rep
    try:
        data = _read_limited(cached, limits.max_object_size)
        cert = read_ca_pointers(data, limits=limits)
    except RpkiRepoError:
        return None, rep
    rep.transport = "cached"
    rep.reasons.append(Reason.FETCH_STALE.value)
    return cert, rep


def _rsync_one_file(uri: RsyncUri, opts: FetchOptions, deadline: float) -> bytes:
    """A TA certificate over rsync: that one file of its directory is fetched (anchored
    filter rules; anything else the server lists is skipped) into a scratch directory, and
    read."""
    from rpkirepo.rsync.client import fetch_module

    parent_text, _, name = uri.uri.rpartition("/")
    parent = RsyncUri(parent_text + "/")
    scratch = opts.cache / f"{TMP_PREFIX}ta"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        fetch_module(
            parent,
            Path(tmp),
            limits=opts.limits,
            deadline=deadline,
            only_names=(name,),
            protocol=opts.rsync_protocol,
        )
        return _read_limited(Path(tmp) / name, opts.limits.max_object_size)


# ---- helpers -------------------------------------------------------------------------------------
def _index_objects(conn: sqlite3.Connection) -> dict[str, dict[str, bytes]] | None:
    """Every object of a store by directory, in one scan: cheaper than a range query per
    publication point once a store has more than a few.  None above ``_HELD_INDEX_ROWS``
    (memory: ~150 bytes a row)."""
    try:
        (rows,) = conn.execute("SELECT COUNT(*) FROM objects").fetchone()
        if rows > _HELD_INDEX_ROWS:
            return None
        index: dict[str, dict[str, bytes]] = {}
        for path, sha in conn.execute("SELECT path, sha256 FROM objects"):
            parent, _, name = path.rpartition("/")
            entries = index.get(parent)
            if entries is None:
                entries = index[parent] = {}
            entries[name] = bytes(sha)
    except sqlite3.Error:
        return None
    return index


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InputError(Reason.STORAGE_IO, f"cannot read: {exc.strerror}", path=str(path)) from exc
    try:
        parts = []
        want = limit + 1
        while want > 0 and (part := os.read(fd, min(want, 1 << 20))):
            parts.append(part)
            want -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError as exc:
        raise InputError(Reason.STORAGE_IO, f"cannot read: {exc.strerror}", path=str(path)) from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LimitExceeded(Reason.OBJECT_TOO_LARGE, "larger than max_object_size", path=str(path))
    return data


def build_view(
    cache: Path,
    walk_owner: dict[str, RepositoryKey],
    stores: dict[RepositoryKey, Store],
    tas: Iterable[tuple[str, str]] = (),
) -> None:
    """``CACHE/objects`` -> ``views/NAME``: one symlink per module into its store's current
    tree, and each TA certificate as ``ta/TAL/FILE`` (rpki-client's cache layout, so that
    ``rpki-client -n -d CACHE/objects`` reads it); made beside the old view and swapped in at
    once; older views are removed."""
    views = cache / "views"
    views.mkdir(parents=True, exist_ok=True)
    name = f"{int(time.time())}-{secrets.token_hex(3)}"
    tmp = views / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        for module, key in sorted(walk_owner.items()):
            store = stores[key]
            rel = uri_to_relpath(RsyncUri(module))
            if not (store.tree / rel).is_dir():
                continue
            link = tmp / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(store.tree / rel, link.parent)
            os.symlink(target, link)
        for tal, filename in tas:
            src = cache / "ta" / f"{tal}.cer"
            if src.is_file():
                (tmp / "ta" / tal).mkdir(parents=True, exist_ok=True)
                os.link(src, tmp / "ta" / tal / filename)
        os.rename(tmp, views / name)
    except BaseException:
        remove_tree(tmp)
        raise
    replace_symlink(cache / "objects", f"views/{name}")
    for entry in os.scandir(views):
        if entry.name != name:
            remove_tree(Path(entry.path))


def run_fetch(
    opts: FetchOptions,
    *,
    tals: Sequence[TrustAnchorLocator] = (),
    repositories: Iterable[tuple[RepositoryKey, RsyncUri | None]] = (),
    progress: Progress = _no_progress,
) -> FetchReport:
    """One fetch run over the cache: walk from ``tals``, or update the given repositories
    (with the rsync module to use as fallback), then swap the output view."""
    opts.cache.mkdir(parents=True, exist_ok=True)
    with DirLock(opts.cache):
        walk = _Walk(opts, progress)
        started = time.monotonic()
        for key, module in repositories:
            store = walk.store(key)
            if module is not None:
                store.modules.add(module.module_uri.uri)
            walk.submit(key)
        for tal in tals:
            cert, ta_rep = fetch_ta(tal, opts, walk._deadline())
            walk.report.tals.append(ta_rep)
            if cert is not None:
                walk.add_ca(_Ca(cert, ta_rep.uri or tal.name, 0, tal.name))
        walk.run()
        owners = dict(walk.module_owner)
        for key, store in walk.stores.items():
            if not tals:
                # One repository asked for by name: every module its tree holds is shown.
                for held in _modules_in(store):
                    owners.setdefault(held, key)
        tas = [
            (t.tal, (t.uri or tal.ordered_uris[0].uri).rsplit("/", 1)[-1])
            for t, tal in zip(walk.report.tals, tals, strict=True)
        ]
        build_view(opts.cache, owners, walk.stores, tas)
        walk.save_manifest_numbers()
        walk.report.seconds = time.monotonic() - started
        return walk.report


def _modules_in(store: Store) -> list[str]:
    out: list[str] = []
    if not store.has_copy():
        return out
    for host in sorted(os.listdir(store.tree)):
        if not (store.tree / host).is_dir():
            continue
        for module in sorted(os.listdir(store.tree / host)):
            with contextlib.suppress(RpkiRepoError):
                out.append(RsyncUri(f"rsync://{host}/{module}/").uri)
    return out
