"""`rpkirepo sync` against a hostile upstream (issue 4; rrdp-checklist (b) and the (c) catalogue).

A real testbed is published by ``rpkirepo publish`` three times (serials 1, 2 and 3 of one
session); a scripted HTTP server (:mod:`hostile_http`) serves the publisher's RRDP directory, and
each test first brings a mirror to a good state (serial 1, by the snapshot).  Then the upstream
serves one bad input of the catalogue, built from the publisher's real files or with the RRDP
writer, with hashes computed so that only the intended defect is present.  After the run:

* a refusal raises the right :class:`RpkiRepoError` subclass with the right :class:`Reason`, or,
  where the rule is "take the snapshot", the run succeeds by the snapshot with that reason;
* what the mirror serves is consistent (every file our notification names exists with the hash
  it lists, the snapshot it names holds exactly the objects of ``rsync/current``) and is the
  last good state: after a refusal the notification bytes and the ``current`` link are those of
  before, and the tree holds the last good objects.

Test ids are named after the catalogue entry they cover (``c1-...`` is rrdp-checklist (c)1).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hostile_http import (
    HostileServer,
    Reply,
    close_wait,
    closed_port,
    drip,
    gzip_stream,
    hang,
    redirect,
    serve,
    tls_server_context,
)
from peers import make_tls_ca
from rpkirepo.errors import (
    InputError,
    IntegrityError,
    LimitExceeded,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.fsutil import TMP_PREFIX
from rpkirepo.httpget import HttpOptions
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rrdp.model import (
    DeltaRef,
    FileKind,
    NotificationFile,
    PublishElement,
    SessionId,
    Sha256,
    SnapshotRef,
)
from rpkirepo.rrdp.parser import iter_events, parse_notification
from rpkirepo.rrdp.writer import (
    delta_start,
    end_tag,
    notification_bytes,
    publish_element,
    snapshot_start,
    withdraw_element,
)
from rpkirepo.sync.mirror import SyncOptions, SyncResult, read_status, sync_once
from rpkirepo.sync.upstream import DirUpstream, HttpUpstream, Upstream
from rpkirepo.testbed import TestbedOptions, advance, generate
from rpkirepo.uri import HttpsUri, RsyncUri
from rrdp_bad_inputs import (
    LOL,
    SPACES,
    Build,
    Encode,
    Notifications,
    bad_encodings,
    bad_notifications,
    hash_pieces,
)

PUBLIC = "https://rrdp.example.net/rrdp/"
NOTIFY = PUBLIC + "notification.xml"
RSYNC = "rsync://localhost/repo/"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
#: Another valid version 4 UUID (a new session upstream).
OTHER_SESSION = "0b6c2f7e-5a53-4c1e-9d4f-2f0d5c7a9e11"

# =========================================================================== the upstream


@pytest.fixture(scope="module", autouse=True)
def no_syncfs() -> Iterator[None]:
    """Durability is not what this module tests (test_sync_crash does), and on a busy
    machine each syncfs(2) waits for every other process's dirty pages: skip the flushes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rpkirepo.sync.mirror.sync_filesystem", lambda _path: None)
        yield


@dataclass(frozen=True)
class Version:
    """One serial as the publisher wrote it."""

    serial: int
    files: dict[str, bytes]  # the publisher's RRDP directory, by relative path
    objects: dict[str, bytes]  # the repository, by path below RSYNC

    @property
    def notification(self) -> NotificationFile:
        return parse_notification(self.files["notification.xml"])

    @property
    def snapshot_rel(self) -> str:
        return rel(self.notification.snapshot.uri)

    def delta_rel(self, serial: int) -> str:
        return next(rel(d.uri) for d in self.notification.deltas if d.serial == serial)

    @property
    def snapshot(self) -> bytes:
        return self.files[self.snapshot_rel]

    def delta(self, serial: int) -> bytes:
        return self.files[self.delta_rel(serial)]


@dataclass(frozen=True)
class Published:
    session: str
    v: dict[int, Version]


def rel(uri: HttpsUri) -> str:
    assert uri.uri.startswith(PUBLIC), uri
    return uri.uri[len(PUBLIC) :]


def read_dir(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """A testbed published at serials 1, 2 and 3 (each a real ``advance``: ROAs revoked and
    added, manifests and CRLs reissued)."""
    root = tmp_path_factory.mktemp("upstream")
    tb = TestbedOptions(
        out_dir=root / "testbed",
        rsync_base=RSYNC,
        rrdp_base=PUBLIC,
        cas=3,
        depth=2,
        roas_per_ca=3,
        seed=7,
        now=NOW,
        aspa_version=1,
    )
    bed = generate(tb)
    opts = PublishOptions(
        source_dir=bed.repository,
        rsync_base=RsyncUri(RSYNC),
        https_base=HttpsUri(PUBLIC),
        rrdp_dir=root / "out" / "rrdp",
        rsync_dir=root / "out" / "rsync",
        state_dir=root / "publish-state",
        workers=1,
    )
    versions: dict[int, Version] = {}
    for serial in (1, 2, 3):
        if serial > 1:
            advance(tb.out_dir, now=NOW + timedelta(hours=serial))
        result = publish(opts)
        assert result.serial == serial
        versions[serial] = Version(serial, read_dir(opts.rrdp_dir), read_dir(bed.repository))
    assert [d.serial for d in versions[3].notification.deltas] == [3, 2]
    assert len(versions[1].objects) > 2 * 10  # enough for the shrink guard to speak
    return Published(str(versions[1].notification.session_id), versions)


# =========================================================================== RRDP builders


def sha(data: bytes) -> Sha256:
    return Sha256.of(data)


def notification(
    session: str,
    serial: int,
    snapshot: tuple[str, bytes],
    deltas: tuple[tuple[int, str, bytes], ...] = (),
) -> bytes:
    """A notification naming ``snapshot`` and ``deltas`` (relative paths) with their true
    hashes."""
    return notification_bytes(
        NotificationFile(
            SessionId(session),
            serial,
            SnapshotRef(HttpsUri(PUBLIC + snapshot[0]), sha(snapshot[1])),
            tuple(DeltaRef(s, HttpsUri(PUBLIC + r), sha(d)) for s, r, d in deltas),
        )
    )


def pub(path: str, data: bytes, replaces: bytes | None = None) -> bytes:
    return publish_element(RsyncUri(RSYNC + path), data, sha(replaces) if replaces else None)


def wd(path: str, current: bytes) -> bytes:
    return withdraw_element(RsyncUri(RSYNC + path), sha(current))


def snapshot_xml(session: str, serial: int, objects: dict[str, bytes], *extra: bytes) -> bytes:
    body = [pub(p, objects[p]) for p in sorted(objects)]
    return b"".join(
        [snapshot_start(SessionId(session), serial), *body, *extra, end_tag(FileKind.SNAPSHOT)]
    )


def delta_xml(session: str, serial: int, *elements: bytes) -> bytes:
    return b"".join([delta_start(SessionId(session), serial), *elements, end_tag(FileKind.DELTA)])


def diff_elements(old: dict[str, bytes], new: dict[str, bytes]) -> list[bytes]:
    """The publish/withdraw elements that turn ``old`` into ``new``."""
    out = [wd(p, old[p]) for p in sorted(old) if p not in new]
    for p in sorted(new):
        if p not in old:
            out.append(pub(p, new[p]))
        elif old[p] != new[p]:
            out.append(pub(p, new[p], replaces=old[p]))
    return out


def objects_of_snapshot(data: bytes) -> dict[str, bytes]:
    return {
        ev.uri.uri[len(RSYNC) :]: ev.data
        for ev in iter_events([data], FileKind.SNAPSHOT)
        if isinstance(ev, PublishElement)
    }


# =========================================================================== the mirror


def read_tree(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


@dataclass
class Served:
    notification: bytes
    current: str
    objects: dict[str, bytes]
    serial: int
    session: str


@dataclass
class Mirror:
    """A mirror of the upstream in ``root``, fed by ``server``."""

    root: Path
    server: HostileServer
    up: Published
    #: Where upstream's files are read: an http(s) base URI, or a directory (starts with /).
    source: str = ""
    good: Served | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.source:
            self.source = self.server.url("/rrdp/")

    @property
    def rrdp_dir(self) -> Path:
        return self.root / "rrdp"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def rsync_dir(self) -> Path:
        return self.root / "rsync"

    def options(self, limits: dict[str, int] | None = None, **changes: object) -> SyncOptions:
        lim = DEFAULT_LIMITS.override(limits or {})
        upstream: Upstream = (
            DirUpstream(Path(self.source))
            if self.source.startswith("/")
            else HttpUpstream(self.source, HttpOptions(limits=lim))
        )
        opts = SyncOptions(
            notification_uri=HttpsUri(NOTIFY),
            upstream=upstream,
            state_dir=self.state_dir,
            rrdp_dir=self.rrdp_dir,
            rsync_dir=self.rsync_dir,
            limits=lim,
        )
        return replace(opts, **changes)  # type: ignore[arg-type]

    # -- what the upstream serves

    def serve_files(self, files: dict[str, bytes]) -> None:
        self.server.files = {"/rrdp/" + k: v for k, v in files.items()}
        self.server.routes.clear()

    def serve_version(self, serial: int, extra: dict[str, bytes] | None = None) -> None:
        """Version ``serial``'s files, plus or replaced by ``extra`` (relative paths)."""
        self.serve_files({**self.up.v[serial].files, **(extra or {})})

    def serve_notification(
        self, data: bytes, serial: int = 2, extra: dict[str, bytes] | None = None
    ) -> None:
        """``data`` as the notification, the other files those of version ``serial``."""
        self.serve_version(serial, {**(extra or {}), "notification.xml": data})

    # -- runs

    def sync(self, limits: dict[str, int] | None = None, **changes: object) -> SyncResult:
        self.server.clear()
        return sync_once(self.options(limits, **changes))

    def refused(
        self,
        error: type[RpkiRepoError],
        reason: Reason,
        limits: dict[str, int] | None = None,
        **changes: object,
    ) -> RpkiRepoError:
        with pytest.raises(RpkiRepoError) as info:
            self.sync(limits, **changes)
        exc = info.value
        assert (type(exc), exc.reason) == (error, reason), exc
        return exc

    # -- what the mirror serves

    def served(self) -> Served:
        """Check that the served RRDP files and rsync tree are consistent; return them."""
        data = (self.rrdp_dir / "notification.xml").read_bytes()
        assert gzip.decompress((self.rrdp_dir / "notification.xml.gz").read_bytes()) == data
        n = parse_notification(data)
        refs = [(n.snapshot.uri, n.snapshot.hash)] + [(d.uri, d.hash) for d in n.deltas]
        for uri, digest in refs:
            path = self.rrdp_dir / rel(uri)
            content = path.read_bytes()
            assert sha(content) == digest, path
            try:
                unzipped = gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
            except (OSError, EOFError, zlib.error) as exc:
                pytest.fail(f"{path}.gz is not a valid gzip file: {exc}")
            assert unzipped == content, f"{path}.gz differs from {path}"
        snapshot = (self.rrdp_dir / rel(n.snapshot.uri)).read_bytes()
        objects = objects_of_snapshot(snapshot)
        current = os.readlink(self.rsync_dir / "current")
        assert read_tree(self.rsync_dir / "current") == objects
        if n.deltas:
            serials = sorted(d.serial for d in n.deltas)
            assert serials == list(range(serials[0], n.serial + 1))
        return Served(data, current, objects, n.serial, str(n.session_id))

    def assert_unchanged(self) -> None:
        """The last good state is what clients still see."""
        assert self.good is not None
        now = self.served()
        assert now.notification == self.good.notification
        assert now.current == self.good.current
        assert now.objects == self.good.objects

    def assert_serves(self, serial: int, session: str | None = None) -> Served:
        now = self.served()
        assert (now.serial, now.session) == (serial, session or self.up.session)
        assert now.objects == self.up.v[serial].objects
        return now

    def remember(self) -> None:
        self.good = self.served()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def fresh(tmp_path: Path, server: HostileServer, up: Published) -> Mirror:
    """A mirror that never synced."""
    return Mirror(tmp_path / "mirror", server, up)


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory, up: Published) -> Path:
    """A mirror brought to serial 1 by the snapshot, once per module; tests get copies."""
    root = tmp_path_factory.mktemp("synced") / "mirror"
    with HostileServer() as srv:
        m = Mirror(root, srv, up)
        m.serve_version(1)
        result = m.sync()
        assert (result.outcome, result.reason, result.serial) == (
            "snapshot",
            Reason.PLAN_NO_LOCAL_STATE,
            1,
        )
        assert srv.paths() == ["/rrdp/notification.xml", "/rrdp/" + up.v[1].snapshot_rel]
        m.assert_serves(1)
    return root


@pytest.fixture
def mirror(fresh: Mirror, synced: Path) -> Mirror:
    """A mirror in a good state: serial 1, taken by the snapshot (a copy of ``synced``)."""
    shutil.copytree(synced, fresh.root, symlinks=True)
    fresh.serve_version(1)
    fresh.assert_serves(1)
    fresh.remember()
    return fresh


@pytest.fixture
def mirror2(mirror: Mirror) -> Mirror:
    """A mirror brought from serial 1 to 2 by upstream's real delta (it holds delta 2's hash)."""
    mirror.serve_version(2)
    result = mirror.sync()
    assert (result.outcome, result.serial, result.deltas_applied) == ("deltas", 2, 1)
    assert "/rrdp/" + mirror.up.v[2].delta_rel(2) in mirror.server.paths()
    mirror.assert_serves(2)
    mirror.remember()
    return mirror


def only_notification_fetched(m: Mirror) -> None:
    assert m.server.paths() == ["/rrdp/notification.xml"]


# =========================================================================== sanity of the setup


def test_good_deltas_are_applied_and_a_good_snapshot_is_taken(mirror: Mirror) -> None:
    """The harness itself: the publisher's own files are accepted (deltas 2 and 3 in one run),
    and so are files built with the writer the way the bad ones are built."""
    up = mirror.up
    mirror.serve_version(3)
    result = mirror.sync()
    assert (result.outcome, result.reason, result.deltas_applied) == (
        "deltas",
        Reason.PLAN_DELTAS,
        2,
    )
    mirror.assert_serves(3)
    # A writer-built snapshot (no deltas listed) of serial 4 holding serial 1's objects.
    snap = snapshot_xml(up.session, 4, up.v[1].objects)
    mirror.serve_notification(
        notification(up.session, 4, ("w/4/snapshot.xml", snap)), extra={"w/4/snapshot.xml": snap}
    )
    result = mirror.sync()
    assert (result.outcome, result.reason) == ("snapshot", Reason.PLAN_NO_DELTAS)
    assert mirror.served().objects == up.v[1].objects


# =========================================================================== (c) bad notifications

NOTE2: Notifications[Published] = Notifications(
    text=lambda up: up.v[2].files["notification.xml"].decode(), base=lambda _up: PUBLIC
)

BAD_NOTIFICATIONS: list[tuple[str, Build[Published], Reason]] = bad_notifications(
    NOTE2,
    Reason.SYNC_URI_OUTSIDE_BASE,
    [
        (
            "c16-snapshot-other-port",
            NOTE2.edit(
                f'<snapshot uri="{PUBLIC}', '<snapshot uri="https://rrdp.example.net:8443/rrdp/'
            ),
            Reason.SYNC_URI_OUTSIDE_BASE,
        ),
        (
            "c16-delta-outside-base-path",
            NOTE2.edit(
                f'<delta serial="2" uri="{PUBLIC}',
                '<delta serial="2" uri="https://rrdp.example.net/private/',
            ),
            Reason.SYNC_URI_OUTSIDE_BASE,
        ),
    ],
)


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(b, r, id=i) for i, b, r in BAD_NOTIFICATIONS],
)
def test_bad_notification_is_refused_and_nothing_else_fetched(
    mirror: Mirror, build: Build[Published], reason: Reason
) -> None:
    mirror.serve_notification(build(mirror.up, mirror.server))
    mirror.refused(LimitExceeded if reason is Reason.LIMIT else RemoteProtocolError, reason)
    only_notification_fetched(mirror)  # never a snapshot or delta (nor an external entity)
    mirror.assert_unchanged()


# --------------------------------------------------------------------------- (c)4-5 compression

# A bomb stops at a limit; a broken or unknown coding at the HTTP layer.
BAD_ENCODINGS: list[tuple[str, Encode[Published], type[RpkiRepoError], Reason]] = [
    (i, b, LimitExceeded if i.startswith("c4-") else RemoteProtocolError, r)
    for i, b, r in bad_encodings(NOTE2)
]


@pytest.mark.parametrize(
    ("build", "error", "reason"),
    [pytest.param(b, e, r, id=i) for i, b, e, r in BAD_ENCODINGS],
)
def test_bad_compressed_notification_is_refused(
    mirror: Mirror,
    build: Encode[Published],
    error: type[RpkiRepoError],
    reason: Reason,
) -> None:
    mirror.serve_version(2)
    mirror.server.route("/rrdp/notification.xml", build(mirror.up))
    started = time.monotonic()
    mirror.refused(error, reason)
    assert time.monotonic() - started < 5  # bounded time, whatever the expansion
    only_notification_fetched(mirror)
    mirror.assert_unchanged()


def test_gzip_encoded_files_are_accepted(mirror: Mirror) -> None:
    """The control for (c)4-5: every file gzip-encoded by the server is decoded and used (hashes
    are over the decoded bytes, rrdp-checklist (b)8)."""
    mirror.serve_version(3)
    for path, data in mirror.server.files.items():
        mirror.server.route(path, serve(data, gzip=True))
    result = mirror.sync()
    assert (result.outcome, result.deltas_applied) == ("deltas", 2)
    mirror.assert_serves(3)
    assert all("gzip" in r.headers.get("accept-encoding", "") for r in mirror.server.requests)


@pytest.mark.parametrize(
    ("kind", "limits", "reason"),
    [
        pytest.param("giant-tag", {}, Reason.LIMIT, id="c4-gzip-snapshot-giant-start-tag"),
        pytest.param(
            "whitespace",
            {"max_rrdp_file_size": 4 * 1024 * 1024},
            Reason.FILE_TOO_LARGE,
            id="c4-gzip-snapshot-whitespace-bomb",
        ),
    ],
)
def test_gzip_bomb_snapshot_is_refused(
    mirror: Mirror, kind: str, limits: dict[str, int], reason: Reason
) -> None:
    up = mirror.up
    start = snapshot_start(SessionId(up.session), 2)
    if kind == "giant-tag":
        pieces = [start, b'<publish uri="' + RSYNC.encode(), *([b"x" * (1024 * 1024)] * 8)]
    else:
        pieces = [start, *([SPACES] * 24), end_tag(FileKind.SNAPSHOT)]
    digest = Sha256(hash_pieces(pieces))
    text = notification_bytes(
        NotificationFile(
            SessionId(up.session), 2, SnapshotRef(HttpsUri(PUBLIC + "bomb/snapshot.xml"), digest)
        )
    )
    mirror.serve_notification(text)
    mirror.server.route(
        "/rrdp/bomb/snapshot.xml",
        Reply(body=gzip_stream(pieces), headers=(("Content-Encoding", "gzip"),)),
    )
    started = time.monotonic()
    mirror.refused(LimitExceeded, reason, limits)
    assert time.monotonic() - started < 10
    assert mirror.server.paths() == ["/rrdp/notification.xml", "/rrdp/bomb/snapshot.xml"]
    mirror.assert_unchanged()


# =========================================================================== (c) bad snapshots


def good_snapshot(up: Published, *extra: bytes, serial: int = 2) -> bytes:
    return snapshot_xml(up.session, serial, up.v[2].objects, *extra)


def first(up: Published) -> tuple[str, bytes]:
    path = sorted(up.v[2].objects)[0]
    return path, up.v[2].objects[path]


def snap_edit(old: bytes, new: bytes) -> Callable[[Published], bytes]:
    def build(up: Published) -> bytes:
        data = good_snapshot(up)
        assert old in data
        return data.replace(old, new, 1)

    return build


def snap_extra(element: Callable[[Published], bytes]) -> Callable[[Published], bytes]:
    return lambda up: good_snapshot(up, element(up))


OBJ = b"\x30\x82" + bytes(range(256)) * 2  # any bytes will do: the mirror does not validate DER
BIG = 64 * 1024


def raw_publish(uri: str, text: bytes, attrs: str = "") -> bytes:
    return f'<publish uri="{uri}"{attrs}>'.encode() + text + b"</publish>\n"


BAD_SNAPSHOTS: list[
    tuple[str, Callable[[Published], bytes], type[RpkiRepoError], Reason, dict[str, int]]
] = [
    (
        "c1-doctype",
        lambda up: b'<!DOCTYPE snapshot [<!ENTITY a "b">]>\n' + good_snapshot(up),
        RemoteProtocolError,
        Reason.XML_DOCTYPE,
        {},
    ),
    (
        "c6-object-too-large",
        snap_extra(lambda up: pub("ca-1/big.roa", b"\x30" * (BIG + 1))),
        LimitExceeded,
        Reason.OBJECT_TOO_LARGE,
        {"max_object_size": BIG},
    ),
    (
        "c7-malformed-base64",
        snap_extra(lambda up: raw_publish(RSYNC + "ca-1/x.roa", b"MII!!notbase64!!" * 10)),
        RemoteProtocolError,
        Reason.RRDP_BASE64,
        {},
    ),
    (
        "c7-base64-bad-length",
        snap_extra(lambda up: raw_publish(RSYNC + "ca-1/x.roa", base64.b64encode(OBJ)[:-1])),
        RemoteProtocolError,
        Reason.RRDP_BASE64,
        {},
    ),
    (
        "c8-wrong-namespace",
        snap_edit(b'rrdp"', b'rrdp/2"'),
        RemoteProtocolError,
        Reason.RRDP_NAMESPACE,
        {},
    ),
    (
        "c8-version-2",
        snap_edit(b'version="1"', b'version="2"'),
        RemoteProtocolError,
        Reason.RRDP_VERSION,
        {},
    ),
    (
        "c9-unknown-element",
        snap_extra(lambda up: b"<extra/>\n"),
        RemoteProtocolError,
        Reason.RRDP_UNKNOWN_ELEMENT,
        {},
    ),
    (
        "c9-unknown-attribute",
        snap_edit(b"<publish ", b'<publish extra="1" '),
        RemoteProtocolError,
        Reason.RRDP_UNKNOWN_ATTRIBUTE,
        {},
    ),
    (
        "c9-duplicate-attribute",
        snap_edit(b"<publish ", f'<publish uri="{RSYNC}dup.roa" '.encode()),
        RemoteProtocolError,
        Reason.XML_MALFORMED,
        {},
    ),
    (
        "c9-nested-publish",
        snap_extra(
            lambda up: pub("ca-1/outer.roa", OBJ).replace(
                b"</publish>", pub("ca-1/inner.roa", OBJ) + b"</publish>"
            )
        ),
        RemoteProtocolError,
        Reason.RRDP_NESTING,
        {},
    ),
    (
        "c9-mismatched-end-tag",
        snap_edit(b"</publish>", b"</publis>"),
        RemoteProtocolError,
        Reason.XML_MALFORMED,
        {},
    ),
    (
        "c9-text-outside-publish",
        snap_extra(lambda up: b"surprise\n"),
        RemoteProtocolError,
        Reason.RRDP_UNEXPECTED_TEXT,
        {},
    ),
    (
        "c9-truncated",
        lambda up: good_snapshot(up)[:-200],
        RemoteProtocolError,
        Reason.RRDP_TRUNCATED,
        {},
    ),
    (
        "c21-session-differs",
        lambda up: snapshot_xml(OTHER_SESSION, 2, up.v[2].objects),
        RemoteProtocolError,
        Reason.RRDP_SESSION_MISMATCH,
        {},
    ),
    (
        "c21-serial-differs",
        lambda up: good_snapshot(up, serial=3),
        RemoteProtocolError,
        Reason.RRDP_SERIAL_MISMATCH,
        {},
    ),
    (
        "c24-duplicate-uri",
        snap_extra(lambda up: pub(*first(up))),
        RemoteProtocolError,
        Reason.RRDP_DUPLICATE_URI,
        {},
    ),
    (
        "c26-publish-with-hash",
        snap_extra(lambda up: pub("ca-1/x.roa", OBJ, replaces=OBJ)),
        RemoteProtocolError,
        Reason.RRDP_PUBLISH_HASH_IN_SNAPSHOT,
        {},
    ),
    (
        "c26-withdraw",
        snap_extra(lambda up: wd(*first(up))),
        RemoteProtocolError,
        Reason.RRDP_WITHDRAW_IN_SNAPSHOT,
        {},
    ),
    (
        "c27-object-under-100-bytes",
        snap_extra(lambda up: pub("ca-1/tiny.roa", OBJ[:99])),
        RemoteProtocolError,
        Reason.RRDP_OBJECT_TOO_SMALL,
        {},
    ),
    (
        "c28-dot-dot-segment",
        snap_extra(lambda up: raw_publish(RSYNC + "ca-1/../../evil.roa", base64.b64encode(OBJ))),
        RemoteProtocolError,
        Reason.URI_DOT_SEGMENT,
        {},
    ),
    (
        "c28-empty-segment",
        snap_extra(lambda up: raw_publish(RSYNC + "ca-1//evil.roa", base64.b64encode(OBJ))),
        RemoteProtocolError,
        Reason.URI_EMPTY_SEGMENT,
        {},
    ),
    (
        "c28-hidden-segment",
        snap_extra(lambda up: raw_publish(RSYNC + "ca-1/.evil.roa", base64.b64encode(OBJ))),
        RemoteProtocolError,
        Reason.URI_HIDDEN_SEGMENT,
        {},
    ),
]


def serve_snapshot_only(
    m: Mirror, data: bytes, serial: int = 2, path: str = "bad/snapshot.xml"
) -> None:
    """Published at ``serial`` lists no deltas: the mirror must take this snapshot."""
    m.serve_notification(notification(m.up.session, serial, (path, data)), 1, {path: data})


@pytest.mark.parametrize(
    ("build", "error", "reason", "limits"),
    [pytest.param(b, e, r, lim, id=i) for i, b, e, r, lim in BAD_SNAPSHOTS],
)
def test_bad_snapshot_is_refused_and_nothing_applied(
    mirror: Mirror,
    build: Callable[[Published], bytes],
    error: type[RpkiRepoError],
    reason: Reason,
    limits: dict[str, int],
) -> None:
    serve_snapshot_only(mirror, build(mirror.up))
    mirror.refused(error, reason, limits)
    assert mirror.server.paths() == ["/rrdp/notification.xml", "/rrdp/bad/snapshot.xml"]
    mirror.assert_unchanged()
    # The same snapshot without the defect is taken: the defect alone caused the refusal.
    serve_snapshot_only(mirror, good_snapshot(mirror.up))
    assert mirror.sync(limits).outcome == "snapshot"
    mirror.assert_serves(2)


def test_c20_snapshot_hash_mismatch_applies_nothing(mirror: Mirror) -> None:
    up = mirror.up
    good = good_snapshot(up)
    listed = notification(up.session, 2, ("bad/snapshot.xml", good))
    mirror.serve_notification(listed, 1, {"bad/snapshot.xml": good + b"\n"})
    mirror.refused(IntegrityError, Reason.HASH_MISMATCH)
    mirror.assert_unchanged()


def test_failed_snapshot_leaves_no_staging_files(mirror: Mirror) -> None:
    """A refused snapshot's partial copy is removed by the run that refused it, not left in the
    served RRDP directory until some later run."""
    up = mirror.up
    good = good_snapshot(up)
    mirror.serve_notification(
        notification(up.session, 2, ("bad/snapshot.xml", good)),
        1,
        {"bad/snapshot.xml": good + b"\n"},
    )
    mirror.refused(IntegrityError, Reason.HASH_MISMATCH)
    leftovers = [
        p.relative_to(mirror.rrdp_dir).as_posix()
        for p in mirror.rrdp_dir.rglob("*")
        if p.is_file()
        and any(part.startswith(TMP_PREFIX) for part in p.relative_to(mirror.rrdp_dir).parts)
    ]
    assert leftovers == []


def test_shrink_guard_refuses_a_snapshot_dropping_most_objects(mirror: Mirror) -> None:
    up = mirror.up
    keep = dict(sorted(up.v[2].objects.items())[:5])
    small = snapshot_xml(up.session, 2, keep)
    serve_snapshot_only(mirror, small)
    exc = mirror.refused(InputError, Reason.SYNC_SHRINK)
    assert exc.context["held"] == len(up.v[1].objects)
    mirror.assert_unchanged()
    # --force accepts it.
    result = mirror.sync(force=True)
    assert (result.outcome, result.serial, result.objects) == ("snapshot", 2, 5)
    assert mirror.served().objects == keep


# =========================================================================== (c) bad deltas


def good_delta(up: Published) -> bytes:
    return delta_xml(up.session, 2, *diff_elements(up.v[1].objects, up.v[2].objects))


def changed(up: Published) -> tuple[str, bytes, bytes]:
    """An object that serial 2 replaces: path, old and new content."""
    old, new = up.v[1].objects, up.v[2].objects
    path = next(p for p in sorted(new) if p in old and old[p] != new[p])
    return path, old[path], new[path]


def removed(up: Published) -> tuple[str, bytes]:
    old, new = up.v[1].objects, up.v[2].objects
    path = next(p for p in sorted(old) if p not in new)
    return path, old[path]


def delta_with(*extra: Callable[[Published], bytes]) -> Callable[[Published], bytes]:
    """The good delta with more elements appended."""
    return lambda up: delta_xml(
        up.session,
        2,
        *diff_elements(up.v[1].objects, up.v[2].objects),
        *(e(up) for e in extra),
    )


def delta_edit(old: bytes, new: bytes) -> Callable[[Published], bytes]:
    def build(up: Published) -> bytes:
        data = good_delta(up)
        assert old in data
        return data.replace(old, new, 1)

    return build


def delta_replace(
    fn: Callable[[Published, list[bytes]], list[bytes]],
) -> Callable[[Published], bytes]:
    return lambda up: delta_xml(
        up.session, 2, *fn(up, diff_elements(up.v[1].objects, up.v[2].objects))
    )


def without(elements: list[bytes], path: str) -> list[bytes]:
    """``elements`` minus those naming ``path``."""
    marker = f'uri="{RSYNC}{path}"'.encode()
    return [e for e in elements if marker not in e]


def _wrong_replace(up: Published, elements: list[bytes]) -> list[bytes]:
    path, _old, new = changed(up)
    return [*without(elements, path), pub(path, new, replaces=OBJ)]


def _wrong_withdraw(up: Published, elements: list[bytes]) -> list[bytes]:
    path, _old = removed(up)
    return [*without(elements, path), wd(path, OBJ)]


def _publish_existing(up: Published, elements: list[bytes]) -> list[bytes]:
    path, _old, new = changed(up)
    return [*without(elements, path), pub(path, new)]


def _withdraw_with_text(up: Published, elements: list[bytes]) -> list[bytes]:
    w = wd(*removed(up))
    return [e.replace(b"/>", b">AAAA</withdraw>") if e == w else e for e in elements]


BAD_DELTAS: list[tuple[str, Callable[[Published], bytes], Reason, dict[str, int]]] = [
    (
        "c1-doctype",
        lambda up: b'<!DOCTYPE delta [<!ENTITY a "b">]>\n' + good_delta(up),
        Reason.XML_DOCTYPE,
        {},
    ),
    (
        "c6-object-too-large",
        delta_with(lambda up: pub("ca-1/big.roa", b"\x30" * (BIG + 1))),
        Reason.OBJECT_TOO_LARGE,
        {"max_object_size": BIG},
    ),
    (
        "c7-malformed-base64",
        delta_with(lambda up: raw_publish(RSYNC + "ca-1/x.roa", b"MII!!notbase64!!" * 10)),
        Reason.RRDP_BASE64,
        {},
    ),
    ("c8-wrong-namespace", delta_edit(b'rrdp"', b'rrdp/2"'), Reason.RRDP_NAMESPACE, {}),
    ("c9-unknown-element", delta_with(lambda up: b"<extra/>\n"), Reason.RRDP_UNKNOWN_ELEMENT, {}),
    ("c9-mismatched-end-tag", delta_edit(b"</publish>", b"</publis>"), Reason.XML_MALFORMED, {}),
    (
        "c21-session-differs",
        lambda up: delta_xml(OTHER_SESSION, 2, *diff_elements(up.v[1].objects, up.v[2].objects)),
        Reason.RRDP_SESSION_MISMATCH,
        {},
    ),
    (
        "c21-serial-differs",
        lambda up: delta_xml(up.session, 3, *diff_elements(up.v[1].objects, up.v[2].objects)),
        Reason.RRDP_SERIAL_MISMATCH,
        {},
    ),
    ("c22-replace-wrong-hash", delta_replace(_wrong_replace), Reason.HASH_MISMATCH, {}),
    ("c22-withdraw-wrong-hash", delta_replace(_wrong_withdraw), Reason.HASH_MISMATCH, {}),
    (
        "c22-withdraw-unknown-uri",
        delta_with(lambda up: wd("ca-1/never-published.roa", OBJ)),
        Reason.OBJECT_MISSING,
        {},
    ),
    (
        "c22-replace-unknown-uri",
        delta_with(lambda up: pub("ca-1/never-published.roa", OBJ, replaces=OBJ)),
        Reason.OBJECT_MISSING,
        {},
    ),
    (
        "c23-publish-without-hash-over-existing",
        delta_replace(_publish_existing),
        Reason.OBJECT_ALREADY_PRESENT,
        {},
    ),
    (
        "c24-publish-publish",
        delta_with(lambda up: pub("ca-1/twice.roa", OBJ), lambda up: pub("ca-1/twice.roa", OBJ)),
        Reason.RRDP_DUPLICATE_URI,
        {},
    ),
    (
        "c24-replace-replace",
        delta_with(lambda up: pub(changed(up)[0], OBJ, replaces=changed(up)[2])),
        Reason.RRDP_DUPLICATE_URI,
        {},
    ),
    (
        "c24-withdraw-publish",
        delta_with(lambda up: pub(removed(up)[0], OBJ)),
        Reason.RRDP_DUPLICATE_URI,
        {},
    ),
    (
        "c24-withdraw-withdraw",
        delta_with(lambda up: wd(*removed(up))),
        Reason.RRDP_DUPLICATE_URI,
        {},
    ),
    (
        "c25-other-module",
        delta_with(lambda up: publish_element(RsyncUri("rsync://localhost/other/x.roa"), OBJ)),
        Reason.SYNC_RSYNC_MODULE,
        {},
    ),
    ("c26-empty-delta", lambda up: delta_xml(up.session, 2), Reason.RRDP_EMPTY_DELTA, {}),
    (
        "c26-withdraw-with-text",
        delta_replace(_withdraw_with_text),
        Reason.RRDP_WITHDRAW_WITH_CONTENT,
        {},
    ),
    (
        "c26-withdraw-without-hash",
        lambda up: good_delta(up).replace(
            f' hash="{sha(removed(up)[1]).hex}"/>'.encode(), b"/>", 1
        ),
        Reason.RRDP_WITHDRAW_WITHOUT_HASH,
        {},
    ),
    (
        "c27-object-under-100-bytes",
        delta_with(lambda up: pub("ca-1/tiny.roa", OBJ[:99])),
        Reason.RRDP_OBJECT_TOO_SMALL,
        {},
    ),
]


def serve_delta(m: Mirror, data: bytes, listed: bytes | None = None) -> None:
    """Published at serial 2 listing delta 2 = ``data`` (hash of ``listed`` when given) and the
    publisher's real serial-2 snapshot."""
    up = m.up
    v2 = up.v[2]
    m.serve_notification(
        notification(
            up.session,
            2,
            (v2.snapshot_rel, v2.snapshot),
            ((2, "bad/delta.xml", listed if listed is not None else data),),
        ),
        extra={"bad/delta.xml": data},
    )


def assert_fell_back(m: Mirror, result: SyncResult, reason: Reason) -> None:
    assert (result.outcome, result.reason, result.serial) == ("snapshot", reason, 2)
    assert result.deltas_applied == 0
    paths = m.server.paths()
    assert "/rrdp/bad/delta.xml" in paths
    assert "/rrdp/" + m.up.v[2].snapshot_rel in paths
    m.assert_serves(2)


def test_the_good_delta_is_applied(mirror: Mirror) -> None:
    """The control for the table below: the writer-built delta 2 alone is applied."""
    serve_delta(mirror, good_delta(mirror.up))
    result = mirror.sync()
    assert (result.outcome, result.deltas_applied) == ("deltas", 1)
    mirror.assert_serves(2)


@pytest.mark.parametrize(
    ("build", "reason", "limits"),
    [pytest.param(b, r, lim, id=i) for i, b, r, lim in BAD_DELTAS],
)
def test_bad_delta_falls_back_to_the_snapshot(
    mirror: Mirror, build: Callable[[Published], bytes], reason: Reason, limits: dict[str, int]
) -> None:
    serve_delta(mirror, build(mirror.up))
    try:
        result = mirror.sync(limits)
    except RpkiRepoError as exc:
        mirror.assert_unchanged()
        pytest.fail(f"the run failed instead of taking the snapshot: {exc}")
    assert_fell_back(mirror, result, reason)


def test_c20_delta_hash_mismatch_falls_back_to_the_snapshot(mirror: Mirror) -> None:
    good = good_delta(mirror.up)
    serve_delta(mirror, good + b"\n", listed=good)
    assert_fell_back(mirror, mirror.sync(), Reason.HASH_MISMATCH)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(
            lambda d: Reply(status=404, body=b"gone"), Reason.HTTP_STATUS, id="c18-delta-404"
        ),
        pytest.param(
            lambda d: Reply(body=d[: len(d) // 2], content_length=len(d), reset=True),
            Reason.HTTP_MALFORMED,
            id="c33-delta-connection-reset",
        ),
        pytest.param(
            lambda d: Reply(body=d[: len(d) // 2], content_length=len(d)),
            Reason.HTTP_MALFORMED,
            id="c33-delta-shorter-than-content-length",
        ),
    ],
)
def test_delta_fetch_failure_falls_back_to_the_snapshot(
    mirror: Mirror, reply: Callable[[bytes], Reply], reason: Reason
) -> None:
    good = good_delta(mirror.up)
    serve_delta(mirror, good)
    mirror.server.route("/rrdp/bad/delta.xml", reply(good))
    assert_fell_back(mirror, mirror.sync(), reason)


# =========================================================================== (c) planning


def test_c11_delta_gap_takes_the_snapshot(mirror: Mirror) -> None:
    up, v3 = mirror.up, mirror.up.v[3]
    text = notification(
        up.session, 3, (v3.snapshot_rel, v3.snapshot), ((3, v3.delta_rel(3), v3.delta(3)),)
    )
    mirror.serve_notification(text, serial=3)
    result = mirror.sync()
    assert (result.outcome, result.reason, result.deltas_applied) == (
        "snapshot",
        Reason.PLAN_DELTA_GAP,
        0,
    )
    assert "/rrdp/" + v3.snapshot_rel in mirror.server.paths()
    mirror.assert_serves(3)


def test_c11_hole_at_the_end_takes_the_snapshot(mirror: Mirror) -> None:
    up, v3 = mirror.up, mirror.up.v[3]
    text = notification(
        up.session, 3, (v3.snapshot_rel, v3.snapshot), ((2, v3.delta_rel(2), v3.delta(2)),)
    )
    mirror.serve_notification(text, serial=3)
    result = mirror.sync()
    assert (result.outcome, result.reason, result.deltas_applied) == (
        "snapshot",
        Reason.PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL,
        0,
    )
    mirror.assert_serves(3)


def test_c13_too_many_deltas_takes_the_snapshot(mirror: Mirror) -> None:
    mirror.serve_version(3)
    result = mirror.sync({"max_delta_steps": 1})
    assert (result.outcome, result.reason, result.deltas_applied) == (
        "snapshot",
        Reason.PLAN_TOO_MANY_DELTAS,
        0,
    )
    assert "/rrdp/" + mirror.up.v[3].snapshot_rel in mirror.server.paths()
    mirror.assert_serves(3)


def test_c14_listed_delta_hash_changed_takes_the_snapshot(mirror2: Mirror) -> None:
    up, v3 = mirror2.up, mirror2.up.v[3]
    rewritten = v3.delta(2) + b"\n"  # still a valid delta 2, but not the one we applied
    text = notification(
        up.session,
        3,
        (v3.snapshot_rel, v3.snapshot),
        ((3, v3.delta_rel(3), v3.delta(3)), (2, v3.delta_rel(2), rewritten)),
    )
    mirror2.serve_notification(text, 3, {v3.delta_rel(2): rewritten})
    result = mirror2.sync()
    assert (result.outcome, result.reason, result.deltas_applied) == (
        "snapshot",
        Reason.PLAN_DELTA_HASH_CHANGED,
        0,
    )
    assert "/rrdp/" + v3.snapshot_rel in mirror2.server.paths()
    mirror2.assert_serves(3)
    # The rewritten delta is never listed (its name still holds what we served), and the next
    # runs go on as usual: it stops the delta list, it does not stop the mirror.
    n = parse_notification((mirror2.rrdp_dir / "notification.xml").read_bytes())
    assert [d.serial for d in n.deltas] == [3]
    assert mirror2.sync().outcome in ("not-modified", "up-to-date")
    mirror2.assert_serves(3)


def test_c15_serial_regression_takes_the_snapshot(mirror2: Mirror) -> None:
    mirror2.serve_version(1)
    result = mirror2.sync()
    assert (result.outcome, result.reason, result.serial) == (
        "snapshot",
        Reason.PLAN_SERIAL_REGRESSION,
        1,
    )
    assert "/rrdp/" + mirror2.up.v[1].snapshot_rel in mirror2.server.paths()
    mirror2.assert_serves(1)


@pytest.mark.parametrize("serial", [1, 2], ids=["c15-same-serial-new-session", "c15-new-session"])
def test_c15_new_session_takes_the_snapshot(mirror: Mirror, serial: int) -> None:
    up = mirror.up
    snap = snapshot_xml(OTHER_SESSION, serial, up.v[serial].objects)
    path = f"{OTHER_SESSION}/{serial}/snapshot.xml"
    # Published also lists a delta that would connect to our serial, were it the same session.
    delta = delta_xml(OTHER_SESSION, 2, *diff_elements(up.v[1].objects, up.v[2].objects))
    deltas = ((2, f"{OTHER_SESSION}/2/delta.xml", delta),) if serial == 2 else ()
    mirror.serve_notification(
        notification(OTHER_SESSION, serial, (path, snap), deltas),
        1,
        {path: snap, f"{OTHER_SESSION}/2/delta.xml": delta},
    )
    result = mirror.sync()
    assert (result.outcome, result.reason, result.serial, result.deltas_applied) == (
        "snapshot",
        Reason.PLAN_NEW_SESSION,
        serial,
        0,
    )
    mirror.assert_serves(serial, session=OTHER_SESSION)


# =========================================================================== (c)16-19 HTTP


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        pytest.param(
            lambda s: f"http://localhost:{s.port}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-host",
        ),
        pytest.param(
            lambda s: f"http://127.0.0.1:{closed_port()}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-port",
        ),
        pytest.param(
            lambda s: f"https://127.0.0.1:{s.port}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-scheme",
        ),
        pytest.param(
            lambda s: "/rrdp/notification.xml",
            Reason.HTTP_TOO_MANY_REDIRECTS,
            id="c17-redirect-loop",
        ),
    ],
)
def test_notification_redirect_refused(
    mirror: Mirror, target: Callable[[HostileServer], str], reason: Reason
) -> None:
    mirror.serve_version(2)
    mirror.server.files["/elsewhere/notification.xml"] = mirror.up.v[2].files["notification.xml"]
    mirror.server.route("/rrdp/notification.xml", redirect(target(mirror.server)))
    mirror.refused(RemoteProtocolError, reason)
    paths = mirror.server.paths()
    assert "/elsewhere/notification.xml" not in paths
    # A loop is followed at most http_max_redirects times.
    assert len(paths) <= DEFAULT_LIMITS.http_max_redirects + 1
    mirror.assert_unchanged()


def test_c17_redirect_chain_is_capped(mirror: Mirror) -> None:
    hops = DEFAULT_LIMITS.http_max_redirects
    mirror.serve_version(2)
    note = mirror.up.v[2].files["notification.xml"]
    mirror.server.files["/hop/final.xml"] = note
    chain = [f"/hop/{i}" for i in range(hops + 1)] + ["/hop/final.xml"]
    for here, there in itertools.pairwise(chain):
        mirror.server.route(here, redirect(there, status=(301, 302, 307, 308)[len(here) % 4]))
    # hops + 1 redirects: refused.
    mirror.server.route("/rrdp/notification.xml", redirect(chain[0]))
    mirror.refused(RemoteProtocolError, Reason.HTTP_TOO_MANY_REDIRECTS)
    assert "/hop/final.xml" not in mirror.server.paths()
    mirror.assert_unchanged()
    # Exactly http_max_redirects same-origin redirects: followed.
    mirror.server.route("/rrdp/notification.xml", redirect(chain[2]))
    result = mirror.sync()
    assert (result.outcome, result.serial) == ("deltas", 2)
    mirror.assert_serves(2)


def test_c16_snapshot_redirected_to_another_origin_is_refused(mirror: Mirror) -> None:
    up = mirror.up
    serve_snapshot_only(mirror, good_snapshot(up))
    mirror.server.route(
        "/rrdp/bad/snapshot.xml", redirect(f"http://localhost:{mirror.server.port}/x.xml")
    )
    mirror.refused(RemoteProtocolError, Reason.HTTP_REDIRECT)
    assert "/x.xml" not in mirror.server.paths()
    mirror.assert_unchanged()
    # A same-origin redirect of the snapshot is followed.
    mirror.server.route("/rrdp/bad/snapshot.xml", redirect("/moved/snapshot.xml", 307))
    mirror.server.files["/moved/snapshot.xml"] = good_snapshot(up)
    assert mirror.sync().outcome == "snapshot"
    mirror.assert_serves(2)


def test_redirect_without_location_is_refused(mirror: Mirror) -> None:
    mirror.serve_version(2)
    mirror.server.route("/rrdp/notification.xml", Reply(status=302))
    mirror.refused(RemoteProtocolError, Reason.HTTP_MALFORMED)
    mirror.assert_unchanged()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(404, "valid", id="c18-404-with-a-valid-notification-body"),
        pytest.param(500, "doctype", id="c18-500-with-an-xml-body"),
        pytest.param(503, "valid", id="c18-503"),
        pytest.param(204, "valid", id="c18-204"),
        pytest.param(206, "valid", id="c18-206-partial"),
    ],
)
def test_c18_error_status_body_is_not_parsed(mirror: Mirror, status: int, body: str) -> None:
    """Only 200 (and 304 to a conditional request) is accepted; a body that, parsed, would
    succeed (or fail with an XML reason) proves it was not parsed."""
    mirror.serve_version(2)
    data = mirror.up.v[2].files["notification.xml"]
    if body == "doctype":
        data = LOL.encode() + data
    mirror.server.route("/rrdp/notification.xml", Reply(status=status, body=data))
    exc = mirror.refused(RemoteProtocolError, Reason.HTTP_STATUS)
    assert exc.context["status"] == status
    only_notification_fetched(mirror)
    mirror.assert_unchanged()


def test_c18_snapshot_404_applies_nothing(mirror: Mirror) -> None:
    serve_snapshot_only(mirror, good_snapshot(mirror.up))
    mirror.server.route("/rrdp/bad/snapshot.xml", Reply(status=404, body=good_snapshot(mirror.up)))
    mirror.refused(RemoteProtocolError, Reason.HTTP_STATUS)
    mirror.assert_unchanged()


def test_c19_notification_404_on_a_cold_mirror(fresh: Mirror) -> None:
    fresh.serve_files({})
    fresh.refused(RemoteProtocolError, Reason.HTTP_STATUS)
    assert not (fresh.rrdp_dir / "notification.xml").exists()
    assert not os.path.lexists(fresh.rsync_dir / "current")


def test_304_to_an_unconditional_request_is_refused(fresh: Mirror) -> None:
    fresh.serve_version(1)
    fresh.server.route("/rrdp/notification.xml", Reply(status=304, omit_length=True))
    fresh.refused(RemoteProtocolError, Reason.HTTP_STATUS)
    assert not (fresh.rrdp_dir / "notification.xml").exists()


def test_upstream_down_keeps_the_last_good_state(mirror: Mirror) -> None:
    mirror.source = f"http://127.0.0.1:{closed_port()}/rrdp/"
    mirror.refused(RemoteProtocolError, Reason.HTTP_CONNECT)
    mirror.assert_unchanged()


# =========================================================================== (b)4 conditional GET


def test_conditional_get_304_ends_the_run(mirror: Mirror) -> None:
    note = mirror.server.files["/rrdp/notification.xml"]
    result = mirror.sync()
    assert result.outcome == "not-modified"
    only_notification_fetched(mirror)
    headers = mirror.server.requests[0].headers
    assert headers["if-none-match"] == '"' + hashlib.sha256(note).hexdigest()[:32] + '"'
    assert headers["if-modified-since"] == "Sun, 01 Mar 2026 12:00:00 GMT"
    mirror.assert_unchanged()
    # After an update the new validators are sent.
    mirror.serve_version(2)
    assert mirror.sync().outcome == "deltas"
    note2 = mirror.up.v[2].files["notification.xml"]
    assert mirror.sync().outcome == "not-modified"
    only_notification_fetched(mirror)
    assert mirror.server.requests[0].headers["if-none-match"] == (
        '"' + hashlib.sha256(note2).hexdigest()[:32] + '"'
    )


def test_conditional_get_with_last_modified_only(fresh: Mirror) -> None:
    fresh.server.validators = ("last-modified",)
    fresh.serve_version(1)
    assert fresh.sync().outcome == "snapshot"
    result = fresh.sync()
    assert result.outcome == "not-modified"
    only_notification_fetched(fresh)
    headers = fresh.server.requests[0].headers
    assert "if-none-match" not in headers
    assert headers["if-modified-since"] == "Sun, 01 Mar 2026 12:00:00 GMT"
    fresh.assert_serves(1)


def test_unchanged_notification_without_304_fetches_nothing_else(mirror: Mirror) -> None:
    mirror.server.conditional = False
    result = mirror.sync()
    assert (result.outcome, result.serial) == ("up-to-date", 1)
    only_notification_fetched(mirror)
    mirror.assert_unchanged()


# =========================================================================== (c)31 and (c)33


FAST = {"http_read_timeout": 1, "http_file_deadline": 1}


def timed_refusal(
    m: Mirror, reason: Reason, limit: str, limits: dict[str, int] | None = None
) -> None:
    started = time.monotonic()
    exc = m.refused(RemoteProtocolError, reason, limits or FAST)
    took = time.monotonic() - started
    assert took < 3, took
    assert exc.context.get("limit") == limit
    m.assert_unchanged()


def test_c31_server_that_never_answers(mirror: Mirror) -> None:
    mirror.serve_version(2)
    mirror.server.route("/rrdp/notification.xml", hang())
    timed_refusal(mirror, Reason.HTTP_TIMEOUT, "http_read_timeout")


def test_c31_slow_drip_notification_hits_the_file_deadline(mirror: Mirror) -> None:
    mirror.serve_version(2)
    note = mirror.up.v[2].files["notification.xml"]
    # One byte every 50 ms: never silent for a read timeout, but ~25 s for the whole file.
    mirror.server.route("/rrdp/notification.xml", drip(note, every=0.05))
    timed_refusal(mirror, Reason.HTTP_TIMEOUT, "http_file_deadline")


def test_c31_snapshot_goes_silent_midway(mirror: Mirror) -> None:
    snap = good_snapshot(mirror.up)
    serve_snapshot_only(mirror, snap)
    mirror.server.route(
        "/rrdp/bad/snapshot.xml",
        Reply(body=snap[: len(snap) // 2], content_length=len(snap), stall=True),
    )
    # (With both limits at 1 s the file deadline would end the wait first, and be named.)
    timed_refusal(
        mirror,
        Reason.HTTP_TIMEOUT,
        "http_read_timeout",
        {"http_read_timeout": 1, "http_file_deadline": 10},
    )


def test_c31_slow_drip_snapshot_hits_the_file_deadline(mirror: Mirror) -> None:
    snap = good_snapshot(mirror.up)
    serve_snapshot_only(mirror, snap)
    mirror.server.route("/rrdp/bad/snapshot.xml", drip(snap, every=0.05, piece=64))
    timed_refusal(mirror, Reason.HTTP_TIMEOUT, "http_file_deadline")


@pytest.mark.parametrize(
    ("what", "reset"),
    [
        pytest.param("snapshot", True, id="c33-snapshot-connection-reset"),
        pytest.param("snapshot", False, id="c33-snapshot-shorter-than-content-length"),
        pytest.param("notification", False, id="c33-notification-shorter-than-content-length"),
        pytest.param("notification", True, id="c33-notification-connection-reset"),
    ],
)
def test_c33_fetch_dies_midway(mirror: Mirror, what: str, reset: bool) -> None:
    snap = good_snapshot(mirror.up)
    serve_snapshot_only(mirror, snap)
    path = "/rrdp/bad/snapshot.xml" if what == "snapshot" else "/rrdp/notification.xml"
    data = mirror.server.files[path]
    mirror.server.route(
        path, Reply(body=data[: len(data) // 2], content_length=len(data), reset=reset)
    )
    mirror.refused(RemoteProtocolError, Reason.HTTP_MALFORMED)
    mirror.assert_unchanged()


# =========================================================================== TLS and the CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpkirepo", "sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_dirs(m: Mirror) -> list[str]:
    return [
        "--state-dir",
        str(m.state_dir),
        "--rrdp-dir",
        str(m.rrdp_dir),
        "--rsync-dir",
        str(m.rsync_dir),
    ]


@pytest.fixture
def tls_mirror(tmp_path: Path, up: Published) -> Iterator[tuple[Mirror, Path]]:
    ca = make_tls_ca(tmp_path / "tls", names=("localhost",), addresses=("127.0.0.1",))
    ctx = tls_server_context(str(ca.server_cert), str(ca.server_key))
    with HostileServer(tls=ctx) as srv:
        m = Mirror(tmp_path / "mirror", srv, up)
        m.serve_version(1)
        yield m, ca.ca_cert
    assert srv.errors == []


def test_tls_with_ca_file(tls_mirror: tuple[Mirror, Path]) -> None:
    m, ca = tls_mirror
    assert m.source.startswith("https://127.0.0.1:")
    proc = cli(NOTIFY, "--source-uri-base", m.source, "--ca-file", str(ca), "--json", *cli_dirs(m))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert (row["outcome"], row["serial"]) == ("snapshot", 1)
    m.assert_serves(1)


def test_tls_untrusted_certificate_fails_and_insecure_works(
    tls_mirror: tuple[Mirror, Path],
) -> None:
    m, _ca = tls_mirror
    m.refused(RemoteProtocolError, Reason.HTTP_TLS)
    assert not (m.rrdp_dir / "notification.xml").exists()
    assert m.server.paths() == []  # the handshake failed: no request was ever sent
    proc = cli(NOTIFY, "--source-uri-base", m.source, "--insecure", "--json", *cli_dirs(m))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "snapshot"
    m.assert_serves(1)


def test_failing_run_is_recorded_in_status(mirror: Mirror) -> None:
    mirror.serve_notification(LOL.encode() + mirror.up.v[2].files["notification.xml"])
    mirror.refused(RemoteProtocolError, Reason.XML_DOCTYPE)
    mirror.assert_unchanged()
    proc = cli(NOTIFY, "--status", "--json", "--state-dir", str(mirror.state_dir))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["last_reason"] == "xml-doctype"
    assert "[xml-doctype]" in status["last_error"]
    assert (status["session"], status["serial"]) == (mirror.up.session, "1")
    # A later good run clears it.
    mirror.serve_version(2)
    assert mirror.sync().outcome == "deltas"
    assert read_status(mirror.state_dir)["last_reason"] in ("", None)


# =========================================================================== sockets


@pytest.mark.parametrize("case", ["200", "parse-error", "404", "redirect-refused"])
def test_connection_close_responses_leave_no_open_socket(mirror: Mirror, case: str) -> None:
    """A server that announces ``Connection: close`` (or speaks HTTP/1.0) hands the socket to
    the response object: the client must close every response itself, also when the run fails
    and the exception (with its traceback) is kept, as a daemon or a test does."""
    mirror.server.announce_close = True
    mirror.serve_version(2)
    note = mirror.up.v[2].files["notification.xml"]
    before = close_wait(mirror.server.port)  # leaks of earlier tests on a reused port
    kept: object
    if case == "200":
        kept = mirror.sync()
    else:
        if case == "parse-error":
            mirror.server.route("/rrdp/notification.xml", serve(LOL.encode() + note))
            reason = Reason.XML_DOCTYPE
        elif case == "404":
            mirror.server.route("/rrdp/notification.xml", Reply(status=404, body=b"gone\n"))
            reason = Reason.HTTP_STATUS
        else:
            target = f"http://localhost:{mirror.server.port}/x.xml"
            mirror.server.route("/rrdp/notification.xml", redirect(target))
            reason = Reason.HTTP_REDIRECT
        kept = mirror.refused(RemoteProtocolError, reason)
    mirror.server.idle()
    time.sleep(0.05)  # the server's FIN reaches the client socket
    assert close_wait(mirror.server.port) == before, kept


def test_c31_a_hanging_repository_does_not_stop_the_others(mirror: Mirror, tmp_path: Path) -> None:
    """Several repositories in one run (config file): the first upstream never answers, the
    second is served normally; the first fails within the deadline, the second is synced."""
    srv = mirror.server
    mirror.serve_version(2)
    srv.route("/hang/notification.xml", hang())
    config = tmp_path / "sync.toml"
    config.write_text(
        "[limits]\nhttp_read_timeout = 1\nhttp_file_deadline = 1\n\n"
        "[[sync.repository]]\n"
        f'notification_uri = "{NOTIFY}"\n'
        f'source_uri_base = "{srv.url("/hang/")}"\n'
        f'state_dir = "{tmp_path / "stuck"}"\n\n'
        "[[sync.repository]]\n"
        f'notification_uri = "{NOTIFY}"\n'
        f'source_uri_base = "{mirror.source}"\n'
        f'state_dir = "{mirror.state_dir}"\n'
        f'rrdp_dir = "{mirror.rrdp_dir}"\n'
        f'rsync_dir = "{mirror.rsync_dir}"\n'
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rpkirepo", "--config", str(config), "sync", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 10  # the default deadline would be 60 s
    assert proc.returncode == 1, proc.stderr
    stuck, good = json.loads(proc.stdout)
    assert stuck["reason"] == "http-timeout"
    assert (good["outcome"], good["serial"]) == ("deltas", 2)
    mirror.assert_serves(2)


# =========================================================================== file names upstream
# chooses: the mirror stores upstream's files under upstream's names, beside its own files.


def consistent_or_refused(m: Mirror, serial: int, **changes: object) -> None:
    """The run may refuse (then nothing changed) or succeed (then it serves ``serial``
    consistently); it may not leave a served file whose hash differs from our notification's."""
    try:
        m.sync(**changes)
    except RpkiRepoError:
        m.assert_unchanged()
    else:
        m.assert_serves(serial)


def test_snapshot_uri_naming_our_notification_file(mirror: Mirror) -> None:
    up, v2 = mirror.up, mirror.up.v[2]
    snap = good_snapshot(up)
    note = notification(up.session, 2, ("notification.xml", snap))
    calls: list[int] = []

    def notification_then_snapshot(_req: object) -> Reply:
        calls.append(1)
        return serve(note if len(calls) == 1 else snap)

    mirror.serve_version(2)
    mirror.server.route("/rrdp/notification.xml", notification_then_snapshot)
    assert v2.snapshot_rel != "notification.xml"
    consistent_or_refused(mirror, 2)


def test_delta_uri_colliding_with_the_snapshot_gz_sibling(mirror: Mirror) -> None:
    up, v2 = mirror.up, mirror.up.v[2]
    note = notification(
        up.session, 2, ("c/snapshot.xml", v2.snapshot), ((2, "c/snapshot.xml.gz", v2.delta(2)),)
    )
    mirror.serve_notification(
        note, extra={"c/snapshot.xml": v2.snapshot, "c/snapshot.xml.gz": v2.delta(2)}
    )
    consistent_or_refused(mirror, 2)


def test_upstream_rewriting_a_file_we_serve_never_changes_it_under_clients(
    mirror: Mirror,
) -> None:
    """RFC 9697: files are immutable.  Published reusing the URI of the snapshot we serve for
    different content must not change the file our (still current) notification names before
    that notification is replaced: checked while the mirror waits --rrdp-notify-delay."""
    up, v1 = mirror.up, mirror.up.v[1]
    snap2 = good_snapshot(up)
    note = notification(up.session, 2, (v1.snapshot_rel, snap2))
    mirror.serve_notification(note, 1, {v1.snapshot_rel: snap2})
    seen: list[bool] = []

    def check_during_delay(_seconds: float) -> None:
        # What clients see now: our old notification; every file it names must match it.
        served = parse_notification((mirror.rrdp_dir / "notification.xml").read_bytes())
        path = mirror.rrdp_dir / rel(served.snapshot.uri)
        seen.append(sha(path.read_bytes()) == served.snapshot.hash)

    consistent_or_refused(mirror, 2, rrdp_notify_delay=1.0, sleep=check_during_delay)
    assert all(seen), "a served file changed under the current notification"


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda v1: v1.snapshot_rel.rsplit("/", 1)[0], id="a-directory-we-serve"),
        pytest.param(lambda v1: v1.snapshot_rel + "/snapshot.xml", id="below-a-file-we-serve"),
    ],
)
def test_snapshot_path_clashing_with_our_files_is_refused_cleanly(
    mirror: Mirror, where: Callable[[Version], str]
) -> None:
    """Every failure is an RpkiRepoError with a reason (never a bare OSError), and nothing
    changes."""
    up = mirror.up
    path = where(up.v[1])
    snap = good_snapshot(up)
    mirror.serve_notification(notification(up.session, 2, (path, snap)), 1, {path: snap})
    with pytest.raises(RpkiRepoError):
        try:
            mirror.sync()
        except RpkiRepoError:
            raise
        except Exception as exc:
            pytest.fail(f"not an RpkiRepoError: {exc!r}")
    mirror.assert_unchanged()


# =========================================================================== a local upstream
# (--source-uri-base is a directory: files may be hard-linked instead of copied)


@pytest.fixture
def local(tmp_path: Path, server: HostileServer, up: Published) -> Mirror:
    """A mirror of a local upstream directory holding serial 1, in a good state."""
    source = tmp_path / "upstream"
    m = Mirror(tmp_path / "mirror", server, up, source=str(source))
    write_files(source, up.v[1].files)
    assert m.sync().outcome == "snapshot"
    m.assert_serves(1)
    m.remember()
    return m


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if path.startswith("notification.xml"):
            tmp = p.with_name(p.name + ".new")
            tmp.write_bytes(data)
            os.replace(tmp, p)  # as a publisher does: atomically
        elif not p.exists():  # published files are immutable: never rewrite one
            p.write_bytes(data)


def test_local_upstream_good_files_are_taken(local: Mirror) -> None:
    """The control for the two tests below."""
    write_files(Path(local.source), local.up.v[2].files)
    result = local.sync()
    assert (result.outcome, result.serial) == ("deltas", 2)
    local.assert_serves(2)


def test_local_upstream_corrupt_gz_sibling_is_not_served(local: Mirror) -> None:
    """Published's ``.gz`` sibling of the new snapshot is damaged inside the deflate data (its
    trailer intact): what we serve as ``snapshot.xml.gz`` must still decode to the
    hash-checked ``snapshot.xml``."""
    v2 = local.up.v[2]
    files = dict(v2.files)
    gz_rel = v2.snapshot_rel + ".gz"
    damaged = bytearray(files[gz_rel])
    middle = len(damaged) // 2
    damaged[middle : middle + 16] = bytes(b ^ 0x55 for b in damaged[middle : middle + 16])
    files[gz_rel] = bytes(damaged)
    write_files(Path(local.source), files)
    result = local.sync()
    assert (result.outcome, result.serial) == ("deltas", 2)
    local.assert_serves(2)


def test_local_upstream_rewriting_a_published_file_leaves_our_copy_alone(local: Mirror) -> None:
    """Published rewrites (in place) the snapshot file it published: what we serve must not
    change with it, no run of ours having checked the new content."""
    snap = Path(local.source) / local.up.v[1].snapshot_rel
    with open(snap, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x01]))
    local.assert_unchanged()
