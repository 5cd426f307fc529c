"""One repository's local copy: a store per notification URI (or per rsync module).

rrdp-checklist (b)19: objects fetched through one notification file live in that notification's
store and nowhere else, so a repository can never withdraw, replace or shadow another one's
objects; a CA reads only from the store its own SIA names (rpkiNotify, else the rsync module of
caRepository).  A store is the sync engine run in *store mode*
(:class:`~rpkirepo.sync.mirror.SyncOptions` with ``rrdp_output=False``): the same planner,
streaming parser, delta checks, crash-safe commit and revision trees as ``rpkirepo sync``, minus
the RRDP files a mirror serves.  Its tree holds ``host[:port]/module/path`` with RFC 9589 mtimes
behind a ``current`` symlink swapped at the commit point.

Updating a store is RRDP first; when RRDP fails (or the CA has no rpkiNotify) the rsync modules
bound to the store are fetched with the native client (or the rsync binary), quick-checking
every file against the current tree so that nothing already held is fetched again; the new tree
replaces the old one at a single commit point (:func:`~rpkirepo.sync.mirror.adopt_tree`).  The
client reports every file it puts in the new tree (the SHA-256 of what it received, or "linked
from the current tree", whose row the state holds), and so do the modules carried over, so the
tree is never read back to fill the state.  When both fail, the last good tree stays current
(RFC 9286 §6.6; rrdp-checklist (b)24).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rpkirepo.errors import LimitExceeded, Reason, RpkiRepoError, StorageError
from rpkirepo.httpget import HttpOptions
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.sync.mirror import (
    FileReport,
    SyncOptions,
    SyncResult,
    TreeFiles,
    adopt_tree,
    read_status,
    sync_once,
)
from rpkirepo.sync.upstream import HttpUpstream
from rpkirepo.uri import HttpsUri, RsyncUri, uri_to_relpath

if TYPE_CHECKING:
    from rpkirepo.rsync.client import ModuleFetch

__all__ = ["RPKI_EXTENSIONS", "RepositoryKey", "Store", "StoreUpdate"]

log = logging.getLogger("rpkirepo.fetch")

#: The file kinds relying parties fetch over rsync (rpki-client's include list).
RPKI_EXTENSIONS = ("cer", "crl", "gbr", "mft", "roa", "asa", "tak", "spl")


# ---- RepositoryKey -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, order=True)
class RepositoryKey:
    """What identifies a repository: its notification URI, or (no rpkiNotify) its rsync
    module."""

    notify: str = ""
    module: str = ""

    @classmethod
    def for_notify(cls, uri: HttpsUri) -> RepositoryKey:
        return cls(notify=uri.uri)

    @classmethod
    def for_module(cls, uri: RsyncUri) -> RepositoryKey:
        return cls(module=uri.module_uri.uri)

    @property
    def uri(self) -> str:
        return self.notify or self.module

    @property
    def store_id(self) -> str:
        """A directory name: readable, and unique through the hash of the whole URI."""
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        if self.notify:
            host = HttpsUri(self.notify).host
            return f"rrdp-{host}-{digest}"
        m = RsyncUri(self.module)
        return f"rsync-{m.host}-{m.module}-{digest}"


# ---- StoreUpdate ---------------------------------------------------------------------------------
@dataclass(slots=True)
class StoreUpdate:
    """What one update of a store did: the report's per-repository record."""

    key: RepositoryKey
    store_id: str
    #: rrdp | rsync | cached (both failed, the last good copy stays) | none (nothing held)
    transport: str = "none"
    #: not-modified | up-to-date | deltas | snapshot | rsync | failed
    outcome: str = "failed"
    #: Reason codes, in the order things happened: why a snapshot, why RRDP failed, ...
    reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    objects: int = 0
    bytes: int = 0
    added: int = 0
    modified: int = 0
    removed: int = 0
    files_fetched_rsync: int = 0
    rsync_modules: list[str] = field(default_factory=list)
    serial: int = 0
    session_id: str = ""

    @property
    def offers_rrdp(self) -> bool:
        return bool(self.key.notify)


# ---- Store ---------------------------------------------------------------------------------------
class Store:
    """One repository's directory under ``CACHE/stores/``."""

    def __init__(
        self,
        cache: Path,
        key: RepositoryKey,
        *,
        limits: Limits = DEFAULT_LIMITS,
        http: HttpOptions | None = None,
        rsync_external: bool = False,
        rsync_protocol: int = 31,
        cleanup_after: float = 600.0,
    ) -> None:
        self.key = key
        self.root = cache / "stores" / key.store_id
        self.limits = limits
        self.http = http or HttpOptions(limits=limits)
        self.rsync_external = rsync_external
        self.rsync_protocol = rsync_protocol
        self.cleanup_after = cleanup_after
        #: rsync modules whose CAs read from this store (the output view links these).
        self.modules: set[str] = set()
        if key.module:
            self.modules.add(key.module)

    @property
    def tree(self) -> Path:
        """The current tree (a symlink swapped at each commit)."""
        return self.root / "tree" / "current"

    def has_copy(self) -> bool:
        return self.tree.is_dir()

    def path_of(self, uri: RsyncUri) -> Path:
        """Where ``uri`` lives in the current tree (validated segments: never outside it)."""
        return self.tree / uri_to_relpath(uri)

    def _options(self, deadline: float) -> SyncOptions:
        remaining = max(1, int(deadline - time.monotonic()))
        limits = replace(
            self.limits, sync_run_deadline=min(self.limits.sync_run_deadline, remaining)
        )
        # An rsync-only store never speaks RRDP (only adopt_tree runs on it): a fixed name
        # stands where the notification URI would, to mark the state directory as a store's.
        notify = HttpsUri(self.key.notify) if self.key.notify else HttpsUri("https://invalid/x")
        origin = notify.uri[: notify.uri.find("/", len("https://")) + 1]
        return SyncOptions(
            notification_uri=notify,
            upstream=HttpUpstream(origin, replace(self.http, limits=limits)),
            state_dir=self.root / "state",
            rrdp_dir=self.root / "rrdp",
            rsync_dir=self.root / "tree",
            rrdp_output=False,
            cleanup_after=self.cleanup_after,
            limits=limits,
        )

    # ------------------------------------------------------------------ updating

    def update(self, deadline: float, *, rrdp: bool = True) -> StoreUpdate:
        """RRDP first, rsync when RRDP fails or is not offered; never raises."""
        started = time.monotonic()
        rep = StoreUpdate(self.key, self.key.store_id)
        rrdp_ok = False
        if self.key.notify and rrdp:
            try:
                result = sync_once(self._options(deadline))
            except RpkiRepoError as exc:
                log.warning(
                    "RRDP failed for %s: %s", self.key.notify, exc, extra={"reason": exc.reason}
                )
                rep.reasons += [exc.reason.value, Reason.FETCH_RRDP_FAILED.value]
                rep.errors.append(str(exc))
            else:
                rrdp_ok = True
                self._record(rep, result, "rrdp")
        if not rrdp_ok:
            self.update_rsync(rep, self.modules, deadline)
        if rep.transport == "none" and self.has_copy():
            rep.transport = "cached"
            rep.reasons.append(Reason.FETCH_STALE.value)
        rep.objects = self.count_objects() if self.has_copy() else 0
        rep.seconds = time.monotonic() - started
        return rep

    def update_rsync(self, rep: StoreUpdate, modules: Iterable[str], deadline: float) -> None:
        """Fetch ``modules`` over rsync into a new tree (unchanged files linked from the
        current one); on failure the current tree stays.  Records into ``rep``."""
        wanted = sorted(set(modules))
        if not wanted:
            if not rep.reasons:
                rep.reasons.append(Reason.FETCH_NO_REPOSITORY.value)
            return
        # Imported here: the rsync client is only needed when rsync is.
        from rpkirepo.rsync.client import fetch_module, fetch_module_external

        fetched: list[ModuleFetch] = []

        def build(root: Path, current: Path | None, files: TreeFiles) -> None:
            for text in wanted:
                module = RsyncUri(text)
                rel = uri_to_relpath(module)
                dest = root / rel
                dest.mkdir(parents=True)
                basis = current / rel if current is not None else None
                if basis is not None and not basis.is_dir():
                    basis = None
                # The client reports every file (its hash, or "linked from the basis"), so the
                # tree is never read back (TreeFiles).
                report = files.report(rel)
                if time.monotonic() >= deadline:
                    raise LimitExceeded(
                        Reason.FETCH_REPOSITORY_DEADLINE,
                        "no time left for rsync",
                        limit="fetch_repository_deadline",
                    )
                if self.rsync_external:
                    result = fetch_module_external(
                        module,
                        dest,
                        basis=basis,
                        limits=self.limits,
                        deadline=deadline,
                        include_extensions=RPKI_EXTENSIONS,
                        min_size=self.limits.min_object_size,
                        on_file=report,
                    )
                else:
                    result = fetch_module(
                        module,
                        dest,
                        basis=basis,
                        limits=self.limits,
                        deadline=deadline,
                        protocol=self.rsync_protocol,
                        include_extensions=RPKI_EXTENSIONS,
                        min_size=self.limits.min_object_size,
                        on_file=report,
                    )
                fetched.append(result)
            if current is not None:
                refreshed = {uri_to_relpath(RsyncUri(m)) for m in wanted}
                _link_other_modules(root, current, refreshed, files)

        try:
            result = adopt_tree(self._options(deadline), build)
        except RpkiRepoError as exc:
            log.warning(
                "rsync failed for %s: %s", ", ".join(wanted), exc, extra={"reason": exc.reason}
            )
            rep.reasons += [exc.reason.value, Reason.FETCH_RSYNC_FAILED.value]
            rep.errors.append(str(exc))
            return
        rep.transport = "rsync"
        rep.outcome = "rsync"
        rep.rsync_modules = wanted
        rep.added, rep.modified, rep.removed = result.added, result.modified, result.removed
        rep.bytes += sum(f.bytes_received for f in fetched)
        rep.files_fetched_rsync = sum(f.files_fetched for f in fetched)

    def _record(self, rep: StoreUpdate, result: SyncResult, transport: str) -> None:
        rep.transport = transport
        rep.outcome = result.outcome
        if result.reason is not None:
            rep.reasons.append(result.reason.value)
        rep.bytes += result.bytes_fetched
        rep.added, rep.modified, rep.removed = result.added, result.modified, result.removed
        rep.serial, rep.session_id = result.serial, result.session_id

    def count_objects(self) -> int:
        """Objects in the current tree, from the store's state (no walk)."""
        value = read_status(self.root / "state").get("objects")
        return value if isinstance(value, int) else 0


def _link_other_modules(root: Path, current: Path, refreshed: set[str], files: TreeFiles) -> None:
    """Carry the modules this rsync run did not fetch over from the current tree (links),
    reported to ``files`` as links of the current tree's files, whose rows the state holds."""
    try:
        for host in sorted(os.listdir(current)):
            if not _is_real_dir(current / host):
                continue
            for module in sorted(os.listdir(current / host)):
                rel = f"{host}/{module}"
                if rel not in refreshed and _is_real_dir(current / rel):
                    _link_module(current / rel, root / rel, files.report(rel))
    except OSError as exc:
        raise StorageError(
            Reason.STORAGE_IO, f"cannot carry a module over: {exc}", path=str(current)
        ) from None


def _link_module(src: Path, dest: Path, report: FileReport) -> None:
    stack = [""]
    while stack:
        sub = stack.pop()
        out = dest / sub
        out.mkdir(parents=True, exist_ok=True)
        with os.scandir(src / sub) as it:
            for entry in it:
                path = f"{sub}/{entry.name}" if sub else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(
                        Reason.STORAGE_UNEXPECTED,
                        "not a regular file in the current tree",
                        path=entry.path,
                    )
                os.link(entry.path, out / entry.name, follow_symlinks=False)
                report(path, st.st_size, st.st_mtime_ns // 1_000_000_000, None)


def _is_real_dir(path: Path) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
