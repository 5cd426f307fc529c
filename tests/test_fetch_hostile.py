"""`rpkirepo fetch` against hostile repositories (issue 7; rrdp-checklist (b) and (c)1-34).

Every case goes through the whole fetch path, :func:`rpkirepo.fetch.run_fetch` from the
testbed's TAL: the TA certificate over HTTPS, then the repository its SIA names, RRDP first,
the rsync fallback, the last good copy, the publication points read back from the store and
the output view.  A real testbed is published by ``rpkirepo publish`` at serials 1, 2 and 3
(:mod:`fetch_support`); a cache is brought once to serial 1 by the snapshot, and each test gets a
copy of it (the last good state).  Then the origin serves one bad input of the catalogue (built
from the publisher's files or with the RRDP writer, hashes computed so that only the intended
defect is present), the fetch runs again, and the test checks:

* the repository's reason codes, in order: the parser / HTTP / integrity reason, then
  ``fetch-rrdp-failed``, then (no rsync daemon runs) the rsync client's reason,
  ``fetch-rsync-failed`` and ``fetch-using-last-good-copy`` with transport ``cached``; or, where
  the rule is "take the snapshot", outcome ``snapshot`` with the planner's or the fallback's
  reason;
* the output view still holds exactly the last good objects (or the new good state where the
  snapshot was rightly taken);
* nothing outside the cache changed (the test's directory around the cache, its parent's
  entries, and the origin's own directory);
* deadline cases end within their small limits.

Test ids are named after the catalogue entry they cover (``c1-...`` is rrdp-checklist (c)1), as
in test_sync_hostile.  Cases that need a working rsync fallback (``with o.rsync():``) or two
repositories (two HTTPS origins, :class:`TwoBed`) are at the end.

Where each entry is played (in a notification N, a snapshot S, a delta D, or the walk):

* (c)1-3 XML: N, S, D; (c)1 also with rsync up.  (c)4 gzip bombs: N, S.  (c)5 gzip and
  unknown codings: N.  (c)6 object limit: S, D (and PIs, non-ASCII: N).  (c)7 base64: S, D.
  (c)8 root attributes: N, S, D.  (c)9 structure: N, S, D.  (c)10 snapshot count: N.
* (c)11 gap, hole; (c)13 steps, listed; (c)14 desync; (c)15 regression, new session: the
  planner takes the snapshot (or refuses a notification listing too many deltas).  (c)12: N.
* (c)16 other origin in N, redirects of N and S, and with rsync up; (c)17 loops, chains;
  (c)18 status codes of N, S, D; (c)19 cold cache, with and without rsync.
* (c)20-24, 26-27 integrity: S keeps the last good copy, D takes the snapshot.
* (c)25 another repository's URIs: :class:`TwoBed` (snapshot, delta publish, delta
  withdraw/replace, a CA claiming the other's module).
* (c)28 URIs in S and D; (c)29 https URIs with ``..`` (and percent-encoded) in N; (c)30
  manifest names; (c)31 hangs and drips against each deadline, and one hanging repository
  beside a good one; (c)32 depth, CA count, repository count, a CA loop; (c)33 connections
  dying midway; (c)34 manifest replays.  The trust anchor: a key that is not the TAL's.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms

from fetch_support import Origin, fetch, origin, snapshot_of_tree, view, view_mtimes
from hostile_http import (
    HostileServer,
    Reply,
    closed_port,
    drip,
    gzip_stream,
    hang,
    redirect,
    tls_server_context,
)
from peers import LOOPBACK4, free_port, make_tls_ca
from rpkirepo.errors import Reason
from rpkirepo.fetch import FetchReport, PubPointReport, StoreUpdate
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.objects import Manifest, SignedObject, read_object
from rpkirepo.publish import PublishOptions, publish
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
    snapshot_start,
    withdraw_element,
)
from rpkirepo.testbed.certificates import CertKind, CertRequest, issue_certificate
from rpkirepo.testbed.cms import OID_MANIFEST, sign_object
from rpkirepo.testbed.generator import point_directory
from rpkirepo.testbed.keys import new_key
from rpkirepo.testbed.manifest import encode_manifest
from rpkirepo.testbed.resources import ResourceSet
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

NOTE = "/rrdp/notification.xml"
#: Another valid version 4 UUID (a new session upstream).
OTHER_SESSION = "0b6c2f7e-5a53-4c1e-9d4f-2f0d5c7a9e11"
#: What the rsync fallback reports when no rsync daemon listens on the module's port.
RSYNC_DOWN = Reason.RSYNC_CLIENT_CONNECT
RRDP_FAILED = Reason.FETCH_RRDP_FAILED
RSYNC_FAILED = Reason.FETCH_RSYNC_FAILED
STALE = Reason.FETCH_STALE
OBJ = b"\x30\x82" + bytes(range(256)) * 2  # any bytes: the store does not validate DER
BIG = 64 * 1024
FAST = replace(DEFAULT_LIMITS, http_read_timeout=1, http_file_deadline=1)


def limits(**values: int) -> Limits:
    return replace(DEFAULT_LIMITS, **values)


@pytest.fixture(scope="module", autouse=True)
def no_syncfs() -> Iterator[None]:
    """Durability is not what this module tests (test_sync_crash does): skip the flushes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rpkirepo.sync.mirror.sync_filesystem", lambda _path: None)
        yield


# =========================================================================== the origin


@dataclass(frozen=True)
class Version:
    """One serial as the publisher wrote it: the files the origin serves (by server path, the
    TA certificate included) and the module's objects (by path below the module)."""

    serial: int
    files: dict[str, bytes]
    objects: dict[str, bytes]

    @property
    def notification(self) -> NotificationFile:
        return parse_notification(self.files[NOTE])

    @property
    def snapshot_path(self) -> str:
        return self.notification.snapshot.uri.path

    def delta_path(self, serial: int) -> str:
        return next(d.uri.path for d in self.notification.deltas if d.serial == serial)

    @property
    def snapshot(self) -> bytes:
        return self.files[self.snapshot_path]

    def delta(self, serial: int) -> bytes:
        return self.files[self.delta_path(serial)]


def sha(data: bytes) -> Sha256:
    return Sha256.of(data)


@dataclass
class Bed:
    """The module's origin, its three published versions and two good caches."""

    o: Origin
    v: dict[int, Version]
    #: A cache brought to serial 1 by the snapshot.
    good: Path
    #: A cache brought to serial 2 by the publisher's delta (it holds delta 2's hash).
    good2: Path

    @property
    def session(self) -> str:
        return str(self.v[1].notification.session_id.value)

    @property
    def rsync(self) -> str:
        return self.o.rsync_base

    def https(self, rel: str) -> HttpsUri:
        return HttpsUri(self.o.https_base + rel)

    # -- RRDP builders (relative paths are below the RRDP base /rrdp/)

    def notification(
        self,
        serial: int,
        snapshot: tuple[str, bytes],
        deltas: tuple[tuple[int, str, bytes], ...] = (),
        session: str | None = None,
    ) -> bytes:
        """A notification naming ``snapshot`` and ``deltas`` with their true hashes."""
        return notification_bytes(
            NotificationFile(
                SessionId(session or self.session),
                serial,
                SnapshotRef(self.https(snapshot[0]), sha(snapshot[1])),
                tuple(DeltaRef(s, self.https(r), sha(d)) for s, r, d in deltas),
            )
        )

    def pub(self, path: str, data: bytes, replaces: bytes | None = None) -> bytes:
        return publish_element(
            RsyncUri(self.rsync + path), data, sha(replaces) if replaces else None
        )

    def wd(self, path: str, current: bytes) -> bytes:
        return withdraw_element(RsyncUri(self.rsync + path), sha(current))

    def snapshot_xml(
        self, serial: int, objects: dict[str, bytes], *extra: bytes, session: str | None = None
    ) -> bytes:
        body = [self.pub(p, objects[p]) for p in sorted(objects)]
        return b"".join(
            [
                snapshot_start(SessionId(session or self.session), serial),
                *body,
                *extra,
                end_tag(FileKind.SNAPSHOT),
            ]
        )

    def delta_xml(self, serial: int, *elements: bytes, session: str | None = None) -> bytes:
        return b"".join(
            [
                delta_start(SessionId(session or self.session), serial),
                *elements,
                end_tag(FileKind.DELTA),
            ]
        )

    def diff(self, old: dict[str, bytes], new: dict[str, bytes]) -> list[bytes]:
        """The publish/withdraw elements that turn ``old`` into ``new``."""
        out = [self.wd(p, old[p]) for p in sorted(old) if p not in new]
        for p in sorted(new):
            if p not in old:
                out.append(self.pub(p, new[p]))
            elif old[p] != new[p]:
                out.append(self.pub(p, new[p], replaces=old[p]))
        return out

    def good_snapshot(self, *extra: bytes, serial: int = 2) -> bytes:
        """Serial 2's objects as a writer-built snapshot of serial ``serial``."""
        return self.snapshot_xml(serial, self.v[2].objects, *extra)

    def good_delta(self) -> bytes:
        return self.delta_xml(2, *self.diff(self.v[1].objects, self.v[2].objects))

    def changed(self) -> tuple[str, bytes, bytes]:
        """An object serial 2 replaces: path, old and new content."""
        old, new = self.v[1].objects, self.v[2].objects
        path = next(p for p in sorted(new) if p in old and old[p] != new[p])
        return path, old[path], new[path]

    def removed(self) -> tuple[str, bytes]:
        """An object serial 2 withdraws."""
        old, new = self.v[1].objects, self.v[2].objects
        path = next(p for p in sorted(old) if p not in new)
        return path, old[path]

    def first(self) -> tuple[str, bytes]:
        path = sorted(self.v[2].objects)[0]
        return path, self.v[2].objects[path]


def serve_files(o: Origin, files: dict[str, bytes]) -> None:
    o.https.files.clear()
    o.https.files.update(files)
    o.https.routes.clear()


def main_repository(report: FetchReport, o: Origin) -> StoreUpdate:
    [r] = [r for r in report.repositories if r.key.notify == o.notify]
    return r


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("hostile-origin")
    with origin(root / "origin", cas=3, depth=2) as o:
        versions: dict[int, Version] = {}
        for serial in (1, 2, 3):
            if serial > 1:
                o.advance()
            v = Version(serial, dict(o.https.files), o.objects())
            assert v.notification.serial == serial
            versions[serial] = v
        assert [d.serial for d in versions[3].notification.deltas] == [3, 2]
        good = root / "good" / "cache"
        serve_files(o, versions[1].files)
        report = fetch(o, good)
        r = main_repository(report, o)
        assert (r.transport, r.outcome, r.reasons) == ("rrdp", "snapshot", ["no-local-state"])
        assert view(good, o.module_dir) == versions[1].objects
        assert len(report.publication_points) == 4
        assert all(p.consistent for p in report.publication_points)
        good2 = root / "good2" / "cache"
        shutil.copytree(good, good2, symlinks=True)
        serve_files(o, versions[2].files)
        r = main_repository(fetch(o, good2), o)
        assert (r.transport, r.outcome) == ("rrdp", "deltas"), r
        assert view(good2, o.module_dir) == versions[2].objects
        yield Bed(o, versions, good, good2)


# =========================================================================== one case


@dataclass
class Case:
    """One test's cache (a copy of a good one) and what lies around it."""

    bed: Bed
    root: Path
    cache: Path
    last_good: dict[str, bytes]
    outside: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    siblings: list[str] = dataclasses.field(default_factory=list)
    #: The origin's directory and the module's good caches (never written by a test).
    origin_tree: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)

    @property
    def o(self) -> Origin:
        return self.bed.o

    @property
    def v(self) -> dict[int, Version]:
        return self.bed.v

    # -- what the origin serves

    def serve_version(self, serial: int, extra: dict[str, bytes] | None = None) -> None:
        """Version ``serial``'s files, plus or replaced by ``extra`` (paths below /rrdp/)."""
        files = dict(self.v[serial].files)
        files.update({"/rrdp/" + k: d for k, d in (extra or {}).items()})
        serve_files(self.o, files)

    def serve_notification(
        self, data: bytes, serial: int = 2, extra: dict[str, bytes] | None = None
    ) -> None:
        self.serve_version(serial, {**(extra or {}), "notification.xml": data})

    def serve_snapshot_only(
        self, data: bytes, serial: int = 2, path: str = "bad/snapshot.xml"
    ) -> None:
        """A notification of ``serial`` listing no deltas: the snapshot must be taken."""
        self.serve_notification(self.bed.notification(serial, (path, data)), 1, {path: data})

    def serve_delta(self, data: bytes, listed: bytes | None = None) -> None:
        """Serial 2 listing delta 2 = ``data`` (the hash of ``listed`` when given) and the
        publisher's real serial-2 snapshot."""
        v2 = self.v[2]
        self.serve_notification(
            self.bed.notification(
                2,
                (v2.snapshot_path.removeprefix("/rrdp/"), v2.snapshot),
                ((2, "bad/delta.xml", listed if listed is not None else data),),
            ),
            extra={"bad/delta.xml": data},
        )

    def route(self, path: str, reply: Reply | Callable[[Any], Reply]) -> None:
        self.o.https.route(path, reply)

    # -- runs

    def fetch(self, lim: Limits = DEFAULT_LIMITS, **kw: object) -> FetchReport:
        self.o.https.clear()
        report = fetch(self.o, self.cache, limits=lim, **kw)
        self.assert_outside_unchanged()
        return report

    def rrdp_paths(self) -> list[str]:
        return [p for p in self.o.https.paths() if p != "/ta.cer"]

    # -- checks

    def view(self) -> dict[str, bytes]:
        return view(self.cache, self.o.module_dir)

    def cold(self) -> None:
        """No cache at all (what lies around it is taken again)."""
        shutil.rmtree(self.cache)
        self.cache.mkdir()
        self.outside = outside_of(self.root, self.cache)

    def assert_outside_unchanged(self) -> None:
        assert outside_of(self.root, self.cache) == self.outside
        assert sorted(os.listdir(self.root.parent)) == self.siblings
        assert snapshot_of_tree(self.o.root.parent) == self.origin_tree

    def kept(self, report: FetchReport, *why: Reason, rsync: Reason = RSYNC_DOWN) -> StoreUpdate:
        """RRDP refused for ``why``, rsync failed too: the last good copy is what the view
        shows, and every publication point is read from it."""
        r = main_repository(report, self.o)
        assert (r.transport, r.outcome) == ("cached", "failed"), r
        assert r.reasons == [*why, RRDP_FAILED, rsync, RSYNC_FAILED, STALE], r.errors
        assert [t.transport for t in report.tals] == ["https"]
        assert self.view() == self.last_good
        assert len(report.publication_points) == 4
        assert all(p.consistent for p in report.publication_points), report.publication_points
        return r

    def took_snapshot(self, report: FetchReport, reason: Reason, serial: int = 2) -> StoreUpdate:
        r = main_repository(report, self.o)
        assert (r.transport, r.outcome, r.reasons, r.serial) == (
            "rrdp",
            "snapshot",
            [reason],
            serial,
        ), r.errors
        assert self.view() == self.v[serial].objects
        assert all(p.consistent for p in report.publication_points), report.publication_points
        return r


def outside_of(root: Path, cache: Path) -> dict[str, tuple[int, int, int]]:
    inner = cache.relative_to(root).as_posix()
    return {
        k: v
        for k, v in snapshot_of_tree(root).items()
        if k != inner and not k.startswith(inner + "/")
    }


def make_case(tmp_path: Path, bed: Bed, good: Path, last_good: dict[str, bytes]) -> Case:
    # Deep enough that a path escaping the cache by a few ``..`` lands in this directory.
    cache = tmp_path / "a" / "b" / "cache"
    shutil.copytree(good, cache, symlinks=True)
    (tmp_path / "sentinel").write_bytes(b"outside the cache")
    (tmp_path / "a" / "sentinel").write_bytes(b"outside the cache")
    case = Case(bed, tmp_path, cache, last_good)
    case.outside = outside_of(tmp_path, cache)
    case.siblings = sorted(os.listdir(tmp_path.parent))
    case.origin_tree = snapshot_of_tree(bed.o.root.parent)
    serve_files(bed.o, bed.v[1].files)
    return case


@pytest.fixture
def case(tmp_path: Path, bed: Bed) -> Iterator[Case]:
    """A cache in a good state: serial 1, taken by the snapshot."""
    c = make_case(tmp_path, bed, bed.good, bed.v[1].objects)
    yield c
    c.assert_outside_unchanged()
    bed.o.https.routes.clear()


@pytest.fixture
def case2(tmp_path: Path, bed: Bed) -> Iterator[Case]:
    """A cache at serial 2, reached by the publisher's delta."""
    c = make_case(tmp_path, bed, bed.good2, bed.v[2].objects)
    serve_files(bed.o, bed.v[2].files)
    yield c
    c.assert_outside_unchanged()
    bed.o.https.routes.clear()


# =========================================================================== controls


def test_control_not_modified_and_good_files_are_taken(case: Case) -> None:
    """The harness itself: an unchanged origin costs one conditional request; the writer-built
    files the bad cases are made from are accepted (a good delta, then a good snapshot)."""
    report = case.fetch()
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome) == ("rrdp", "not-modified")
    assert case.rrdp_paths() == [NOTE]
    case.serve_delta(case.bed.good_delta())
    r = main_repository(case.fetch(), case.o)
    assert (r.transport, r.outcome, r.serial) == ("rrdp", "deltas", 2)
    assert case.view() == case.v[2].objects
    assert "/rrdp/bad/delta.xml" in case.rrdp_paths()
    snap = case.bed.snapshot_xml(3, case.v[1].objects)
    case.serve_snapshot_only(snap, serial=3)
    r = main_repository(case.fetch(), case.o)
    assert (r.transport, r.outcome, r.reasons, r.serial) == (
        "rrdp",
        "snapshot",
        [Reason.PLAN_NO_DELTAS],
        3,
    )
    assert case.view() == case.v[1].objects


# =========================================================================== (c) bad notifications

NOTE2: Notifications[Bed] = Notifications(
    text=lambda bed: bed.v[2].files[NOTE].decode(), base=lambda bed: bed.o.https_base
)

BAD_NOTIFICATIONS: list[tuple[str, Build[Bed], Reason]] = [
    *bad_notifications(
        NOTE2,
        Reason.RRDP_CROSS_ORIGIN,
        [
            (
                "c16-snapshot-other-port",
                NOTE2.edit_base('<snapshot uri="{B}', '<snapshot uri="https://127.0.0.1:1/rrdp/'),
                Reason.RRDP_CROSS_ORIGIN,
            ),
            (
                "c16-delta-other-host",
                NOTE2.edit_base(
                    '<delta serial="2" uri="{B}', '<delta serial="2" uri="https://localhost:{P}/'
                ),
                Reason.RRDP_CROSS_ORIGIN,
            ),
        ],
    ),
    (
        "c29-snapshot-uri-escaping-the-dump-path",
        NOTE2.edit_base('<snapshot uri="{B}', '<snapshot uri="{B}../../../../../../../../tmp/'),
        Reason.URI_DOT_SEGMENT,
    ),
    (
        "c29-delta-uri-escaping-the-dump-path",
        NOTE2.edit_base('<delta serial="2" uri="{B}', '<delta serial="2" uri="{B}a/../../../'),
        Reason.URI_DOT_SEGMENT,
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"), [pytest.param(b, r, id=i) for i, b, r in BAD_NOTIFICATIONS]
)
def test_bad_notification_keeps_the_last_good_copy(
    case: Case, build: Build[Bed], reason: Reason
) -> None:
    case.serve_notification(build(case.bed, case.o.https))
    report = case.fetch()
    case.kept(report, reason)
    assert case.rrdp_paths() == [NOTE]  # never a snapshot or delta (nor an external entity)


# --------------------------------------------------------------------------- (c)4-5 compression


def deflate_trailing(bed: Bed) -> Reply:
    """A deflate stream with trailing bytes: refused already for its coding (only gzip is
    asked for and accepted), so no deflate stream is ever decoded."""
    comp = gzip.zlib.compressobj(9, gzip.zlib.DEFLATED, 15)  # type: ignore[attr-defined]
    body = comp.compress(bed.v[2].files[NOTE]) + comp.flush() + b"TRAILING"
    return Reply(body=body, headers=(("Content-Encoding", "deflate"),))


BAD_ENCODINGS: list[tuple[str, Encode[Bed], Reason]] = bad_encodings(
    NOTE2, [("c5-deflate-coding-refused", deflate_trailing, Reason.HTTP_CONTENT_ENCODING)]
)


@pytest.mark.parametrize(
    ("build", "reason"), [pytest.param(b, r, id=i) for i, b, r in BAD_ENCODINGS]
)
def test_bad_compressed_notification_keeps_the_last_good_copy(
    case: Case, build: Encode[Bed], reason: Reason
) -> None:
    case.serve_version(2)
    case.route(NOTE, build(case.bed))
    started = time.monotonic()
    report = case.fetch()
    assert time.monotonic() - started < 10  # bounded time, whatever the expansion
    case.kept(report, reason)
    assert case.rrdp_paths() == [NOTE]


@pytest.mark.parametrize(
    ("kind", "lim", "reason"),
    [
        pytest.param("giant-tag", DEFAULT_LIMITS, Reason.LIMIT, id="c4-gzip-snapshot-giant-tag"),
        pytest.param(
            "whitespace",
            limits(max_rrdp_file_size=4 * 1024 * 1024),
            Reason.FILE_TOO_LARGE,
            id="c4-gzip-snapshot-whitespace-bomb",
        ),
    ],
)
def test_gzip_bomb_snapshot_keeps_the_last_good_copy(
    case: Case, kind: str, lim: Limits, reason: Reason
) -> None:
    bed = case.bed
    start = snapshot_start(SessionId(bed.session), 2)
    if kind == "giant-tag":
        pieces = [start, b'<publish uri="' + bed.rsync.encode(), *([b"x" * (1024 * 1024)] * 8)]
    else:
        pieces = [start, *([SPACES] * 24), end_tag(FileKind.SNAPSHOT)]
    text = notification_bytes(
        NotificationFile(
            SessionId(bed.session),
            2,
            SnapshotRef(bed.https("bomb/snapshot.xml"), Sha256(hash_pieces(pieces))),
        )
    )
    case.serve_notification(text)
    case.route(
        "/rrdp/bomb/snapshot.xml",
        Reply(body=gzip_stream(pieces), headers=(("Content-Encoding", "gzip"),)),
    )
    started = time.monotonic()
    report = case.fetch(lim)
    assert time.monotonic() - started < 15
    case.kept(report, reason)
    assert case.rrdp_paths() == [NOTE, "/rrdp/bomb/snapshot.xml"]


# =========================================================================== (c) bad snapshots

SnapBuild = Callable[[Bed], bytes]


def snap_edit(old: bytes, new: bytes) -> SnapBuild:
    def build(bed: Bed) -> bytes:
        data = bed.good_snapshot()
        assert old in data
        return data.replace(old, new, 1)

    return build


def snap_extra(element: SnapBuild) -> SnapBuild:
    return lambda bed: bed.good_snapshot(element(bed))


def raw_publish(uri: str, text: bytes, attrs: str = "") -> bytes:
    return f'<publish uri="{uri}"{attrs}>'.encode() + text + b"</publish>\n"


def raw(path: str) -> SnapBuild:
    """A publish element for ``RSYNC_BASE + path``, written as is (no URI check)."""
    return lambda bed: raw_publish(bed.rsync + path, base64.b64encode(OBJ))


def raw_uri(uri: Callable[[Bed], str]) -> SnapBuild:
    return lambda bed: raw_publish(uri(bed), base64.b64encode(OBJ))


def host_port(bed: Bed) -> str:
    return f"{LOOPBACK4}:{bed.o.rsync_port}"


BAD_SNAPSHOTS: list[tuple[str, SnapBuild, Reason, Limits]] = [
    (
        "c1-doctype",
        lambda bed: b'<!DOCTYPE snapshot [<!ENTITY a "b">]>\n' + bed.good_snapshot(),
        Reason.XML_DOCTYPE,
        DEFAULT_LIMITS,
    ),
    (
        "c6-object-too-large",
        snap_extra(lambda bed: bed.pub("ca-1/big.roa", b"\x30" * (BIG + 1))),
        Reason.OBJECT_TOO_LARGE,
        limits(max_object_size=BIG),
    ),
    (
        "c7-malformed-base64",
        snap_extra(lambda bed: raw_publish(bed.rsync + "ca-1/x.roa", b"MII!!notbase64!!" * 10)),
        Reason.RRDP_BASE64,
        DEFAULT_LIMITS,
    ),
    (
        "c7-base64-bad-length",
        snap_extra(lambda bed: raw_publish(bed.rsync + "ca-1/x.roa", base64.b64encode(OBJ)[:-1])),
        Reason.RRDP_BASE64,
        DEFAULT_LIMITS,
    ),
    ("c8-wrong-namespace", snap_edit(b'rrdp"', b'rrdp/2"'), Reason.RRDP_NAMESPACE, DEFAULT_LIMITS),
    (
        "c8-version-2",
        snap_edit(b'version="1"', b'version="2"'),
        Reason.RRDP_VERSION,
        DEFAULT_LIMITS,
    ),
    (
        "c9-unknown-element",
        snap_extra(lambda bed: b"<extra/>\n"),
        Reason.RRDP_UNKNOWN_ELEMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c9-unknown-attribute",
        snap_edit(b"<publish ", b'<publish extra="1" '),
        Reason.RRDP_UNKNOWN_ATTRIBUTE,
        DEFAULT_LIMITS,
    ),
    (
        "c9-nested-publish",
        snap_extra(
            lambda bed: bed.pub("ca-1/outer.roa", OBJ).replace(
                b"</publish>", bed.pub("ca-1/inner.roa", OBJ) + b"</publish>"
            )
        ),
        Reason.RRDP_NESTING,
        DEFAULT_LIMITS,
    ),
    (
        "c9-mismatched-end-tag",
        snap_edit(b"</publish>", b"</publis>"),
        Reason.XML_MALFORMED,
        DEFAULT_LIMITS,
    ),
    (
        "c9-text-outside-publish",
        snap_extra(lambda bed: b"surprise\n"),
        Reason.RRDP_UNEXPECTED_TEXT,
        DEFAULT_LIMITS,
    ),
    ("c9-truncated", lambda bed: bed.good_snapshot()[:-200], Reason.RRDP_TRUNCATED, DEFAULT_LIMITS),
    (
        "c21-session-differs",
        lambda bed: bed.snapshot_xml(2, bed.v[2].objects, session=OTHER_SESSION),
        Reason.RRDP_SESSION_MISMATCH,
        DEFAULT_LIMITS,
    ),
    (
        "c21-serial-differs",
        lambda bed: bed.good_snapshot(serial=3),
        Reason.RRDP_SERIAL_MISMATCH,
        DEFAULT_LIMITS,
    ),
    (
        "c24-duplicate-uri",
        snap_extra(lambda bed: bed.pub(*bed.first())),
        Reason.RRDP_DUPLICATE_URI,
        DEFAULT_LIMITS,
    ),
    (
        "c26-publish-with-hash",
        snap_extra(lambda bed: bed.pub("ca-1/x.roa", OBJ, replaces=OBJ)),
        Reason.RRDP_PUBLISH_HASH_IN_SNAPSHOT,
        DEFAULT_LIMITS,
    ),
    (
        "c26-withdraw",
        snap_extra(lambda bed: bed.wd(*bed.first())),
        Reason.RRDP_WITHDRAW_IN_SNAPSHOT,
        DEFAULT_LIMITS,
    ),
    (
        "c27-object-under-100-bytes",
        snap_extra(lambda bed: bed.pub("ca-1/tiny.roa", OBJ[:99])),
        Reason.RRDP_OBJECT_TOO_SMALL,
        DEFAULT_LIMITS,
    ),
    # (c)28: URIs that would name a file outside the store, or a hidden one.
    (
        "c28-dot-dot-segments",
        snap_extra(raw("ca-1/../../../../../../../../evil.roa")),
        Reason.URI_DOT_SEGMENT,
        DEFAULT_LIMITS,
    ),
    ("c28-dot-segment", snap_extra(raw("ca-1/./evil.roa")), Reason.URI_DOT_SEGMENT, DEFAULT_LIMITS),
    (
        "c28-empty-segment",
        snap_extra(raw("ca-1//evil.roa")),
        Reason.URI_EMPTY_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-empty-module",
        snap_extra(raw_uri(lambda bed: f"rsync://{host_port(bed)}//evil.roa")),
        Reason.URI_EMPTY_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-dot-dot-host",
        snap_extra(raw_uri(lambda bed: "rsync://../repo/evil.roa")),
        Reason.URI_DOT_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-dot-dot-module",
        snap_extra(raw_uri(lambda bed: f"rsync://{host_port(bed)}/../evil.roa")),
        Reason.URI_DOT_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-hidden-segment",
        snap_extra(raw("ca-1/.hidden")),
        Reason.URI_HIDDEN_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-four-dots",
        snap_extra(raw("....//evil.roa")),
        Reason.URI_HIDDEN_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-backslash",
        snap_extra(raw("ca-1\\..\\..\\evil.roa")),
        Reason.URI_BAD_CHARACTER,
        DEFAULT_LIMITS,
    ),
    (
        "c28-nul-character-reference",
        snap_extra(raw("ca-1/evil&#0;.roa")),
        Reason.XML_MALFORMED,
        DEFAULT_LIMITS,
    ),
    (
        "c28-nul-byte",
        snap_extra(raw("ca-1/evil\x00.roa")),
        Reason.XML_MALFORMED,
        DEFAULT_LIMITS,
    ),
    (
        "c28-non-ascii",
        snap_extra(raw("ca-1/\u00e9vil.roa")),
        Reason.XML_NOT_ASCII,
        DEFAULT_LIMITS,
    ),
    (
        "c28-non-ascii-character-reference",
        snap_extra(raw("ca-1/&#233;vil.roa")),
        Reason.URI_BAD_CHARACTER,
        DEFAULT_LIMITS,
    ),
    (
        "c28-over-2048-characters",
        snap_extra(raw("ca-1/" + "x" * 2100 + ".roa")),
        Reason.URI_TOO_LONG,
        DEFAULT_LIMITS,
    ),
    (
        "c28-not-rsync",
        snap_extra(raw_uri(lambda bed: f"https://{host_port(bed)}/repo/evil.roa")),
        Reason.URI_SCHEME,
        DEFAULT_LIMITS,
    ),
]


@pytest.mark.parametrize(
    ("build", "reason", "lim"), [pytest.param(b, r, lim, id=i) for i, b, r, lim in BAD_SNAPSHOTS]
)
def test_bad_snapshot_keeps_the_last_good_copy(
    case: Case, build: SnapBuild, reason: Reason, lim: Limits
) -> None:
    case.serve_snapshot_only(build(case.bed))
    report = case.fetch(lim)
    case.kept(report, reason)
    assert case.rrdp_paths() == [NOTE, "/rrdp/bad/snapshot.xml"]


def test_c20_snapshot_hash_mismatch_keeps_the_last_good_copy(case: Case) -> None:
    good = case.bed.good_snapshot()
    listed = case.bed.notification(2, ("bad/snapshot.xml", good))
    case.serve_notification(listed, 1, {"bad/snapshot.xml": good + b"\n"})
    case.kept(case.fetch(), Reason.HASH_MISMATCH)


# =========================================================================== (c) bad deltas

DeltaBuild = Callable[[Bed], bytes]


def delta_with(*extra: Callable[[Bed], bytes]) -> DeltaBuild:
    """The good delta with more elements appended."""
    return lambda bed: bed.delta_xml(
        2, *bed.diff(bed.v[1].objects, bed.v[2].objects), *(e(bed) for e in extra)
    )


def delta_edit(old: bytes, new: bytes) -> DeltaBuild:
    def build(bed: Bed) -> bytes:
        data = bed.good_delta()
        assert old in data
        return data.replace(old, new, 1)

    return build


def delta_replace(fn: Callable[[Bed, list[bytes]], list[bytes]]) -> DeltaBuild:
    return lambda bed: bed.delta_xml(2, *fn(bed, bed.diff(bed.v[1].objects, bed.v[2].objects)))


def without(bed: Bed, elements: list[bytes], path: str) -> list[bytes]:
    marker = f'uri="{bed.rsync}{path}"'.encode()
    return [e for e in elements if marker not in e]


def _wrong_replace(bed: Bed, elements: list[bytes]) -> list[bytes]:
    path, _old, new = bed.changed()
    return [*without(bed, elements, path), bed.pub(path, new, replaces=OBJ)]


def _wrong_withdraw(bed: Bed, elements: list[bytes]) -> list[bytes]:
    path, _old = bed.removed()
    return [*without(bed, elements, path), bed.wd(path, OBJ)]


def _publish_existing(bed: Bed, elements: list[bytes]) -> list[bytes]:
    path, _old, new = bed.changed()
    return [*without(bed, elements, path), bed.pub(path, new)]


def _withdraw_with_text(bed: Bed, elements: list[bytes]) -> list[bytes]:
    w = bed.wd(*bed.removed())
    return [e.replace(b"/>", b">AAAA</withdraw>") if e == w else e for e in elements]


def _withdraw_without_hash(bed: Bed) -> bytes:
    _path, old = bed.removed()
    return bed.good_delta().replace(f' hash="{sha(old).hex}"/>'.encode(), b"/>", 1)


BAD_DELTAS: list[tuple[str, DeltaBuild, Reason, Limits]] = [
    (
        "c1-doctype",
        lambda bed: b'<!DOCTYPE delta [<!ENTITY a "b">]>\n' + bed.good_delta(),
        Reason.XML_DOCTYPE,
        DEFAULT_LIMITS,
    ),
    (
        "c6-object-too-large",
        delta_with(lambda bed: bed.pub("ca-1/big.roa", b"\x30" * (BIG + 1))),
        Reason.OBJECT_TOO_LARGE,
        limits(max_object_size=BIG),
    ),
    (
        "c7-malformed-base64",
        delta_with(lambda bed: raw_publish(bed.rsync + "ca-1/x.roa", b"MII!!notbase64!!" * 10)),
        Reason.RRDP_BASE64,
        DEFAULT_LIMITS,
    ),
    ("c8-wrong-namespace", delta_edit(b'rrdp"', b'rrdp/2"'), Reason.RRDP_NAMESPACE, DEFAULT_LIMITS),
    (
        "c9-unknown-element",
        delta_with(lambda bed: b"<extra/>\n"),
        Reason.RRDP_UNKNOWN_ELEMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c9-mismatched-end-tag",
        delta_edit(b"</publish>", b"</publis>"),
        Reason.XML_MALFORMED,
        DEFAULT_LIMITS,
    ),
    (
        "c21-session-differs",
        lambda bed: bed.delta_xml(
            2, *bed.diff(bed.v[1].objects, bed.v[2].objects), session=OTHER_SESSION
        ),
        Reason.RRDP_SESSION_MISMATCH,
        DEFAULT_LIMITS,
    ),
    (
        "c21-serial-differs",
        lambda bed: bed.delta_xml(3, *bed.diff(bed.v[1].objects, bed.v[2].objects)),
        Reason.RRDP_SERIAL_MISMATCH,
        DEFAULT_LIMITS,
    ),
    ("c22-replace-wrong-hash", delta_replace(_wrong_replace), Reason.HASH_MISMATCH, DEFAULT_LIMITS),
    (
        "c22-withdraw-wrong-hash",
        delta_replace(_wrong_withdraw),
        Reason.HASH_MISMATCH,
        DEFAULT_LIMITS,
    ),
    (
        "c22-withdraw-unknown-uri",
        delta_with(lambda bed: bed.wd("ca-1/never-published.roa", OBJ)),
        Reason.OBJECT_MISSING,
        DEFAULT_LIMITS,
    ),
    (
        "c22-replace-unknown-uri",
        delta_with(lambda bed: bed.pub("ca-1/never-published.roa", OBJ, replaces=OBJ)),
        Reason.OBJECT_MISSING,
        DEFAULT_LIMITS,
    ),
    (
        "c23-publish-without-hash-over-existing",
        delta_replace(_publish_existing),
        Reason.OBJECT_ALREADY_PRESENT,
        DEFAULT_LIMITS,
    ),
    (
        "c24-publish-publish",
        delta_with(
            lambda bed: bed.pub("ca-1/twice.roa", OBJ), lambda bed: bed.pub("ca-1/twice.roa", OBJ)
        ),
        Reason.RRDP_DUPLICATE_URI,
        DEFAULT_LIMITS,
    ),
    (
        "c24-replace-replace",
        delta_with(lambda bed: bed.pub(bed.changed()[0], OBJ, replaces=bed.changed()[2])),
        Reason.RRDP_DUPLICATE_URI,
        DEFAULT_LIMITS,
    ),
    (
        "c24-withdraw-publish",
        delta_with(lambda bed: bed.pub(bed.removed()[0], OBJ)),
        Reason.RRDP_DUPLICATE_URI,
        DEFAULT_LIMITS,
    ),
    (
        "c24-withdraw-withdraw",
        delta_with(lambda bed: bed.wd(*bed.removed())),
        Reason.RRDP_DUPLICATE_URI,
        DEFAULT_LIMITS,
    ),
    ("c26-empty-delta", lambda bed: bed.delta_xml(2), Reason.RRDP_EMPTY_DELTA, DEFAULT_LIMITS),
    (
        "c26-withdraw-with-text",
        delta_replace(_withdraw_with_text),
        Reason.RRDP_WITHDRAW_WITH_CONTENT,
        DEFAULT_LIMITS,
    ),
    (
        "c26-withdraw-without-hash",
        _withdraw_without_hash,
        Reason.RRDP_WITHDRAW_WITHOUT_HASH,
        DEFAULT_LIMITS,
    ),
    (
        "c27-object-under-100-bytes",
        delta_with(lambda bed: bed.pub("ca-1/tiny.roa", OBJ[:99])),
        Reason.RRDP_OBJECT_TOO_SMALL,
        DEFAULT_LIMITS,
    ),
    (
        "c28-dot-dot-segments",
        delta_with(raw("ca-1/../../../../../../../../evil.roa")),
        Reason.URI_DOT_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-withdraw-dot-dot",
        delta_with(
            lambda bed: (
                f'<withdraw uri="{bed.rsync}ca-1/../../../../../../sentinel" '
                f'hash="{sha(b"outside the cache").hex}"/>\n'
            ).encode()
        ),
        Reason.URI_DOT_SEGMENT,
        DEFAULT_LIMITS,
    ),
    (
        "c28-hidden-segment",
        delta_with(raw("ca-1/.hidden")),
        Reason.URI_HIDDEN_SEGMENT,
        DEFAULT_LIMITS,
    ),
]


@pytest.mark.parametrize(
    ("build", "reason", "lim"), [pytest.param(b, r, lim, id=i) for i, b, r, lim in BAD_DELTAS]
)
def test_bad_delta_takes_the_snapshot(
    case: Case, build: DeltaBuild, reason: Reason, lim: Limits
) -> None:
    case.serve_delta(build(case.bed))
    report = case.fetch(lim)
    case.took_snapshot(report, reason)
    paths = case.rrdp_paths()
    assert "/rrdp/bad/delta.xml" in paths
    assert case.v[2].snapshot_path in paths


def test_c20_delta_hash_mismatch_takes_the_snapshot(case: Case) -> None:
    good = case.bed.good_delta()
    case.serve_delta(good + b"\n", listed=good)
    case.took_snapshot(case.fetch(), Reason.HASH_MISMATCH)


# =========================================================================== (c)11-15 planning


def test_c11_delta_gap_takes_the_snapshot(case: Case) -> None:
    v3 = case.v[3]
    text = case.bed.notification(
        3,
        (v3.snapshot_path.removeprefix("/rrdp/"), v3.snapshot),
        ((3, v3.delta_path(3).removeprefix("/rrdp/"), v3.delta(3)),),
    )
    case.serve_notification(text, serial=3)
    case.took_snapshot(case.fetch(), Reason.PLAN_DELTA_GAP, serial=3)
    assert v3.snapshot_path in case.rrdp_paths()


def test_c11_hole_at_the_end_takes_the_snapshot(case: Case) -> None:
    v3 = case.v[3]
    text = case.bed.notification(
        3,
        (v3.snapshot_path.removeprefix("/rrdp/"), v3.snapshot),
        ((2, v3.delta_path(2).removeprefix("/rrdp/"), v3.delta(2)),),
    )
    case.serve_notification(text, serial=3)
    case.took_snapshot(case.fetch(), Reason.PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL, serial=3)


def test_c13_too_many_deltas_takes_the_snapshot(case: Case) -> None:
    case.serve_version(3)
    case.took_snapshot(case.fetch(limits(max_delta_steps=1)), Reason.PLAN_TOO_MANY_DELTAS, 3)
    assert not any("delta" in p for p in case.rrdp_paths())


def test_c13_thousands_of_deltas_listed_are_refused(case: Case) -> None:
    """More delta references than max_deltas_listed: the notification itself is refused."""
    v3 = case.v[3]
    deltas = tuple((s, f"d/{s}.xml", b"x") for s in range(4, 4000))
    text = case.bed.notification(
        3999, (v3.snapshot_path.removeprefix("/rrdp/"), v3.snapshot), deltas
    )
    case.serve_notification(text, serial=3)
    case.kept(case.fetch(limits(max_deltas_listed=1000)), Reason.TOO_MANY_DELTAS)
    assert case.rrdp_paths() == [NOTE]


def test_c14_listed_delta_hash_changed_takes_the_snapshot(case2: Case) -> None:
    v3 = case2.v[3]
    rewritten = v3.delta(2) + b"\n"  # still a valid delta 2, but not the one listed before
    text = case2.bed.notification(
        3,
        (v3.snapshot_path.removeprefix("/rrdp/"), v3.snapshot),
        (
            (3, v3.delta_path(3).removeprefix("/rrdp/"), v3.delta(3)),
            (2, v3.delta_path(2).removeprefix("/rrdp/"), rewritten),
        ),
    )
    case2.serve_notification(text, 3, {v3.delta_path(2).removeprefix("/rrdp/"): rewritten})
    case2.took_snapshot(case2.fetch(), Reason.PLAN_DELTA_HASH_CHANGED, serial=3)
    assert v3.snapshot_path in case2.rrdp_paths()


def test_c15_serial_regression_takes_the_snapshot_and_c34_replay_is_reported(
    case2: Case,
) -> None:
    """Serial 2 is held; the origin goes back to serial 1 (same session).  No delta is applied:
    the snapshot of serial 1 is taken (rrdp-checklist (b)13), and the manifests it brings
    back, older than the ones seen, are reported as replays ((c)34, RFC 9286 §4.2.1); the
    highest manifest numbers seen are kept for the next run."""
    numbers = (case2.cache / "manifest-numbers.json").read_text()
    case2.serve_version(1)
    report = case2.fetch()
    r = main_repository(report, case2.o)
    assert (r.transport, r.outcome, r.reasons, r.serial) == (
        "rrdp",
        "snapshot",
        [Reason.PLAN_SERIAL_REGRESSION],
        1,
    )
    assert case2.view() == case2.v[1].objects
    replayed = [p for p in report.publication_points if Reason.FETCH_MANIFEST_REPLAY in p.reasons]
    assert replayed, report.publication_points
    assert (case2.cache / "manifest-numbers.json").read_text() == numbers


@pytest.mark.parametrize("serial", [1, 2], ids=["c15-same-serial-new-session", "c15-new-session"])
def test_c15_new_session_takes_the_snapshot(case: Case, serial: int) -> None:
    bed = case.bed
    snap = bed.snapshot_xml(serial, bed.v[serial].objects, session=OTHER_SESSION)
    path = f"{OTHER_SESSION}/{serial}/snapshot.xml"
    # It also lists a delta that would connect to our serial, were it the same session.
    delta = bed.delta_xml(2, *bed.diff(bed.v[1].objects, bed.v[2].objects), session=OTHER_SESSION)
    deltas = ((2, f"{OTHER_SESSION}/2/delta.xml", delta),) if serial == 2 else ()
    case.serve_notification(
        bed.notification(serial, (path, snap), deltas, session=OTHER_SESSION),
        1,
        {path: snap, f"{OTHER_SESSION}/2/delta.xml": delta},
    )
    r = case.took_snapshot(case.fetch(), Reason.PLAN_NEW_SESSION, serial)
    assert r.session_id == OTHER_SESSION
    assert not any("delta" in p for p in case.rrdp_paths())


# =========================================================================== (c)16-19 HTTP


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        pytest.param(
            lambda s: f"https://localhost:{s.port}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-host",
        ),
        pytest.param(
            lambda s: f"https://127.0.0.1:{closed_port()}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-port",
        ),
        pytest.param(
            lambda s: f"http://127.0.0.1:{s.port}/elsewhere/notification.xml",
            Reason.HTTP_REDIRECT,
            id="c16-redirect-other-scheme",
        ),
        pytest.param(
            lambda s: NOTE,
            Reason.HTTP_TOO_MANY_REDIRECTS,
            id="c17-redirect-loop",
        ),
    ],
)
def test_notification_redirect_refused(
    case: Case, target: Callable[[HostileServer], str], reason: Reason
) -> None:
    case.serve_version(2)
    case.o.https.files["/elsewhere/notification.xml"] = case.v[2].files[NOTE]
    case.route(NOTE, redirect(target(case.o.https)))
    case.kept(case.fetch(), reason)
    paths = case.rrdp_paths()
    assert "/elsewhere/notification.xml" not in paths
    assert len(paths) <= DEFAULT_LIMITS.http_max_redirects + 1


def test_c17_redirect_chain_is_capped(case: Case) -> None:
    hops = DEFAULT_LIMITS.http_max_redirects
    case.serve_version(2)
    case.o.https.files["/hop/final.xml"] = case.v[2].files[NOTE]
    chain = [f"/hop/{i}" for i in range(hops + 1)] + ["/hop/final.xml"]
    for here, there in itertools.pairwise(chain):
        case.route(here, redirect(there, status=(301, 302, 307, 308)[len(here) % 4]))
    case.route(NOTE, redirect(chain[0]))
    case.kept(case.fetch(), Reason.HTTP_TOO_MANY_REDIRECTS)
    assert "/hop/final.xml" not in case.rrdp_paths()
    # Exactly http_max_redirects same-origin redirects are followed.
    case.route(NOTE, redirect(chain[2]))
    r = main_repository(case.fetch(), case.o)
    assert (r.transport, r.outcome, r.serial) == ("rrdp", "deltas", 2)
    assert case.view() == case.v[2].objects


def test_c16_snapshot_redirected_to_another_origin_is_refused(case: Case) -> None:
    case.serve_snapshot_only(case.bed.good_snapshot())
    case.route("/rrdp/bad/snapshot.xml", redirect(f"https://localhost:{case.o.https.port}/x.xml"))
    case.o.https.files["/x.xml"] = case.bed.good_snapshot()
    case.kept(case.fetch(), Reason.HTTP_REDIRECT)
    assert "/x.xml" not in case.rrdp_paths()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(404, "valid", id="c18-404-with-a-valid-notification-body"),
        pytest.param(500, "doctype", id="c18-500-with-an-xml-body"),
        pytest.param(503, "valid", id="c18-503"),
        pytest.param(206, "valid", id="c18-206-partial"),
    ],
)
def test_c18_error_status_body_is_not_parsed(case: Case, status: int, body: str) -> None:
    """Only 200 (and 304 to a conditional request) is accepted: a body that, parsed, would
    succeed (or fail with an XML reason) proves it was not parsed."""
    case.serve_version(2)
    data = case.v[2].files[NOTE]
    if body == "doctype":
        data = LOL.encode() + data
    case.route(NOTE, Reply(status=status, body=data))
    case.kept(case.fetch(), Reason.HTTP_STATUS)
    assert case.rrdp_paths() == [NOTE]


def test_c18_snapshot_404_keeps_the_last_good_copy(case: Case) -> None:
    snap = case.bed.good_snapshot()
    case.serve_snapshot_only(snap)
    case.route("/rrdp/bad/snapshot.xml", Reply(status=404, body=snap))
    case.kept(case.fetch(), Reason.HTTP_STATUS)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(
            lambda c, d: Reply(status=404, body=d), Reason.HTTP_STATUS, id="c18-delta-404"
        ),
        pytest.param(
            lambda c, d: Reply(status=500, body=d), Reason.HTTP_STATUS, id="c18-delta-500"
        ),
        pytest.param(
            lambda c, d: redirect(f"https://localhost:{c.o.https.port}/rrdp/bad/delta.xml"),
            Reason.HTTP_REDIRECT,
            id="c16-delta-redirect-other-origin",
        ),
        pytest.param(
            lambda c, d: redirect("/rrdp/bad/delta.xml"),
            Reason.HTTP_TOO_MANY_REDIRECTS,
            id="c17-delta-redirect-loop",
        ),
    ],
)
def test_delta_fetch_failure_takes_the_snapshot(
    case: Case, reply: Callable[[Case, bytes], Reply], reason: Reason
) -> None:
    good = case.bed.good_delta()
    case.serve_delta(good)
    case.route("/rrdp/bad/delta.xml", reply(case, good))
    case.took_snapshot(case.fetch(), reason)


def test_c19_notification_404_on_a_cold_cache_without_rsync(case: Case) -> None:
    """No copy at all, RRDP 404 and rsync down: no crash; the repository reports why, has no
    transport, and the TA's publication point reports that no repository could be used."""
    case.cold()
    serve_files(case.o, {"/ta.cer": case.v[1].files["/ta.cer"]})
    report = case.fetch()
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome) == ("none", "failed")
    assert r.reasons == [Reason.HTTP_STATUS, RRDP_FAILED, RSYNC_DOWN, RSYNC_FAILED]
    assert not report.ok
    [pp] = report.publication_points
    assert pp.reasons == [Reason.FETCH_NO_REPOSITORY]
    assert case.view() == {}


# =========================================================================== (c)31 and (c)33


@pytest.mark.parametrize(
    ("setup", "lim", "budget"),
    [
        pytest.param(
            lambda c: c.route(NOTE, hang()), FAST, 3.0, id="c31-notification-never-answers"
        ),
        pytest.param(
            lambda c: c.route(NOTE, drip(c.v[2].files[NOTE], every=0.05)),
            FAST,
            3.0,
            id="c31-notification-drip-file-deadline",
        ),
        pytest.param(
            lambda c: c.route(NOTE, drip(c.v[2].files[NOTE], every=0.01)),
            limits(http_read_timeout=30, http_file_deadline=60, fetch_repository_deadline=1),
            2.5,
            id="c31-notification-drip-repository-deadline",
        ),
        pytest.param(
            lambda c: c.route(NOTE, hang()),
            limits(http_read_timeout=6, fetch_repository_deadline=1),
            2.5,
            id="c31-notification-hang-repository-deadline",
        ),
        pytest.param(
            lambda c: c.route(NOTE, hang()),
            limits(http_read_timeout=6, fetch_run_deadline=1),
            2.5,
            id="c31-notification-hang-run-deadline",
        ),
    ],
)
def test_c31_stalling_notification_is_bounded(
    case: Case, setup: Callable[[Case], None], lim: Limits, budget: float
) -> None:
    case.serve_version(2)
    setup(case)
    started = time.monotonic()
    report = case.fetch(lim)
    took = time.monotonic() - started
    assert took < budget, took
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome) == ("cached", "failed"), r
    if lim is FAST:
        assert r.reasons == [Reason.HTTP_TIMEOUT, RRDP_FAILED, RSYNC_DOWN, RSYNC_FAILED, STALE]
    else:
        # Out of time: whatever names the RRDP failure, rsync is not even tried.
        deadline = (
            Reason.HTTP_TIMEOUT,
            Reason.FETCH_REPOSITORY_DEADLINE,
            Reason.FETCH_RUN_DEADLINE,
        )
        assert r.reasons[0] in deadline, r.reasons
        assert r.reasons[1:] == [
            RRDP_FAILED,
            Reason.FETCH_REPOSITORY_DEADLINE,
            RSYNC_FAILED,
            STALE,
        ], r.reasons
    assert case.view() == case.last_good


@pytest.mark.parametrize(
    ("how", "lim"),
    [
        pytest.param("stall", FAST, id="c31-snapshot-goes-silent-midway"),
        pytest.param("drip", FAST, id="c31-snapshot-drip-file-deadline"),
        pytest.param(
            "drip",
            limits(http_read_timeout=30, http_file_deadline=60, fetch_repository_deadline=2),
            id="c31-snapshot-drip-repository-deadline",
        ),
    ],
)
def test_c31_stalling_snapshot_is_bounded(case: Case, how: str, lim: Limits) -> None:
    snap = case.bed.good_snapshot()
    case.serve_snapshot_only(snap)
    if how == "stall":
        reply = Reply(body=snap[: len(snap) // 2], content_length=len(snap), stall=True)
    else:
        reply = drip(snap, every=0.05, piece=64)
    case.route("/rrdp/bad/snapshot.xml", reply)
    started = time.monotonic()
    report = case.fetch(lim)
    took = time.monotonic() - started
    assert took < 4.0, took
    case.kept(report, Reason.HTTP_TIMEOUT)


@pytest.mark.parametrize(
    ("what", "reset"),
    [
        pytest.param("snapshot", True, id="c33-snapshot-connection-reset"),
        pytest.param("snapshot", False, id="c33-snapshot-shorter-than-content-length"),
        pytest.param("notification", False, id="c33-notification-shorter-than-content-length"),
        pytest.param("notification", True, id="c33-notification-connection-reset"),
    ],
)
def test_c33_fetch_dies_midway(case: Case, what: str, reset: bool) -> None:
    case.serve_snapshot_only(case.bed.good_snapshot())
    path = "/rrdp/bad/snapshot.xml" if what == "snapshot" else NOTE
    data = case.o.https.files[path]
    case.route(path, Reply(body=data[: len(data) // 2], content_length=len(data), reset=reset))
    report = case.fetch()
    case.kept(report, died_midway(report, case.o, reset))


def died_midway(report: FetchReport, o: Origin, reset: bool) -> Reason:
    """A body shorter than announced is http-malformed; after a TCP reset the kernel may drop
    what was received but not yet read, headers included, and the client then sees the
    connection die (http-connect-failed) or the body cut (http-malformed)."""
    first = Reason(main_repository(report, o).reasons[0])
    assert first in (
        (Reason.HTTP_CONNECT, Reason.HTTP_MALFORMED) if reset else (Reason.HTTP_MALFORMED,)
    )
    return first


@pytest.mark.parametrize("reset", [True, False], ids=["c33-delta-reset", "c33-delta-short"])
def test_c33_delta_dies_midway_takes_the_snapshot(case: Case, reset: bool) -> None:
    good = case.bed.good_delta()
    case.serve_delta(good)
    case.route(
        "/rrdp/bad/delta.xml",
        Reply(body=good[: len(good) // 2], content_length=len(good), reset=reset),
    )
    report = case.fetch()
    case.took_snapshot(report, died_midway(report, case.o, reset))


def test_c33_a_refused_snapshot_leaves_the_store_usable(case: Case) -> None:
    """After a refused snapshot the store is not half-updated: the next good delta from our
    serial applies on top of the last good state."""
    good = case.bed.good_snapshot()
    case.serve_notification(
        case.bed.notification(2, ("bad/snapshot.xml", good)), 1, {"bad/snapshot.xml": good[:-9]}
    )
    case.kept(case.fetch(), Reason.RRDP_TRUNCATED)
    case.serve_delta(case.bed.good_delta())
    r = main_repository(case.fetch(), case.o)
    assert (r.transport, r.outcome, r.serial) == ("rrdp", "deltas", 2)
    assert case.view() == case.v[2].objects


# =========================================================================== manifests: (c)30, 32

IA5 = 0x16


def manifest_of(data: bytes) -> Manifest:
    obj = read_object(data, name="x.mft")
    assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
    return obj.content


def resign_manifest(
    mft: bytes,
    files: dict[str, bytes],
    *,
    bump: int = 1000,
    raw_names: dict[str, bytes] | None = None,
) -> bytes:
    """A manifest like ``mft`` (same EE certificate and times, a higher number) listing
    ``files``, signed again with a throwaway key: the walk reads manifests, it does not
    validate their signatures (a validator does).  ``raw_names`` swaps a listed ASCII name
    for other bytes of the same length in the DER (names IA5String cannot encode)."""
    old = manifest_of(mft)
    info: Any = cms.ContentInfo.load(mft)
    ee = info["content"]["certificates"][0].chosen.dump()
    econtent = encode_manifest(old.manifest_number + bump, old.this_update, old.next_update, files)
    for name, replacement in (raw_names or {}).items():
        assert len(replacement) == len(name.encode())
        econtent = econtent.replace(
            bytes([IA5, len(name)]) + name.encode(), bytes([IA5, len(name)]) + replacement, 1
        )
    when: datetime = old.this_update
    return sign_object(OID_MANIFEST, econtent, ee, new_key(), when)


def point_files(objects: dict[str, bytes], point: str) -> dict[str, bytes]:
    """The files directly in publication point ``point`` (e.g. ``ca-1``), by name."""
    prefix = point + "/"
    return {
        p[len(prefix) :]: d
        for p, d in objects.items()
        if p.startswith(prefix) and "/" not in p[len(prefix) :]
    }


def manifest_path(objects: dict[str, bytes], point: str) -> str:
    [path] = [p for p in objects if p.startswith(point + "/") and p.endswith(".mft")]
    return path


def pp_of(report: FetchReport, point: str, o: Origin) -> PubPointReport:
    [pp] = [p for p in report.publication_points if p.ca_repository == o.rsync_base + point + "/"]
    return pp


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(("../ca-2/evil.cer",), id="c30-manifest-name-dot-dot"),
        pytest.param(("../../../../../../../../sentinel.cer",), id="c30-manifest-name-escaping"),
        pytest.param(("/etc/passwd.cer",), id="c30-manifest-name-absolute"),
        pytest.param(("sub/evil.roa", ".hidden.roa"), id="c30-manifest-name-subdir-and-hidden"),
    ],
)
def test_c30_manifest_file_names_outside_the_point(case: Case, names: tuple[str, ...]) -> None:
    """A manifest (delivered by RRDP) lists names with ``../``, an absolute path, a
    directory, a hidden name (RFC 9286 §4.2.2 allows none of them): the manifest is refused
    and reported on its publication point, nothing is read or written for those names, the
    children it lists (ca-3) are not followed, and the other points are read as usual."""
    bed = case.bed
    objects = dict(bed.v[1].objects)
    path = manifest_path(objects, "ca-1")
    listed = {n: d for n, d in point_files(objects, "ca-1").items() if not n.endswith(".mft")}
    listed.update({n: OBJ for n in names})
    objects[path] = resign_manifest(objects[path], listed)
    case.serve_snapshot_only(bed.snapshot_xml(2, objects))
    report = case.fetch()
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome, r.reasons) == ("rrdp", "snapshot", [Reason.PLAN_NO_DELTAS])
    assert case.view() == objects
    pp = pp_of(report, "ca-1", case.o)
    assert (pp.reasons, pp.missing, pp.manifest_number) == ([Reason.OBJECT_MALFORMED], [], "")
    others = [p for p in report.publication_points if p is not pp]
    assert len(others) == 2 and all(p.consistent for p in others), others
    # The control: the same manifest without the bad names is read, and ca-3 followed.
    objects[path] = resign_manifest(
        bed.v[1].objects[path], {n: d for n, d in listed.items() if n not in names}, bump=2000
    )
    case.serve_snapshot_only(bed.snapshot_xml(3, objects), serial=3)
    report = case.fetch()
    assert len(report.publication_points) == 4
    assert all(p.consistent for p in report.publication_points), report.publication_points


def test_c30_manifest_file_name_not_ascii(case: Case) -> None:
    """A manifest name that is not ASCII (é inside an IA5String): the manifest is refused and
    reported; the other publication points are read as usual."""
    bed = case.bed
    objects = dict(bed.v[1].objects)
    path = manifest_path(objects, "ca-1")
    listed = {n: d for n, d in point_files(objects, "ca-1").items() if not n.endswith(".mft")}
    listed["XXvil.roa"] = OBJ
    objects[path] = resign_manifest(
        objects[path], listed, raw_names={"XXvil.roa": "\u00e9vil.roa".encode()}
    )
    case.serve_snapshot_only(bed.snapshot_xml(2, objects))
    report = case.fetch()
    assert main_repository(report, case.o).outcome == "snapshot"
    pp = pp_of(report, "ca-1", case.o)
    assert pp.reasons == [Reason.OBJECT_MALFORMED], pp
    others = [p for p in report.publication_points if p is not pp]
    assert len(others) == 2 and all(p.consistent for p in others), others


def test_c32_a_loop_of_cas_is_visited_once(case: Case) -> None:
    """ca-3 (below ca-1) publishes a copy of ca-1's certificate, listed on its manifest: a
    cycle ca-1 -> ca-3 -> ca-1.  Each publication point is visited once and the walk ends."""
    bed = case.bed
    objects = dict(bed.v[1].objects)
    [ca1] = [p for p in objects if p.endswith("/ca-1.cer")]
    objects["ca-3/back-to-ca-1.cer"] = objects[ca1]
    path = manifest_path(objects, "ca-3")
    listed = {n: d for n, d in point_files(objects, "ca-3").items() if not n.endswith(".mft")}
    objects[path] = resign_manifest(objects[path], listed)
    case.serve_snapshot_only(bed.snapshot_xml(2, objects))
    started = time.monotonic()
    report = case.fetch()
    assert time.monotonic() - started < 10
    assert main_repository(report, case.o).outcome == "snapshot"
    assert case.view() == objects
    assert sorted(p.ca_repository for p in report.publication_points) == sorted(
        {p.ca_repository for p in report.publication_points}
    )
    assert len(report.publication_points) == 4
    assert all(p.consistent for p in report.publication_points), report.publication_points
    assert report.refusals == []


@pytest.mark.parametrize(
    ("lim", "reason", "points"),
    [
        pytest.param(limits(fetch_max_depth=1), Reason.FETCH_DEPTH, 3, id="c32-depth"),
        pytest.param(limits(fetch_max_depth=0), Reason.FETCH_DEPTH, 1, id="c32-depth-zero"),
        pytest.param(limits(fetch_max_cas=2), Reason.FETCH_TOO_MANY_CAS, 2, id="c32-cas"),
    ],
)
def test_c32_chain_limits(case: Case, lim: Limits, reason: Reason, points: int) -> None:
    """Depth and CA count caps: the CAs past them are refused (each refusal names the CA
    certificate) and the walk ends; what was fetched is kept."""
    report = case.fetch(lim)
    assert {x["reason"] for x in report.refusals} == {reason.value}
    assert all(x["uri"].endswith(".cer") for x in report.refusals), report.refusals
    assert len(report.publication_points) == points
    assert main_repository(report, case.o).outcome == "not-modified"
    if reason is Reason.FETCH_DEPTH:
        assert max(p.depth for p in report.publication_points) <= lim.fetch_max_depth


# =========================================================================== (c)34 on its own


def test_c34_replayed_manifest_is_reported(case: Case) -> None:
    """The origin serves (as a new serial) a manifest of ca-1 older than the one held: the
    replay is reported on that publication point only."""
    bed = case.bed
    objects = dict(bed.v[1].objects)
    path = manifest_path(objects, "ca-1")
    listed = {n: d for n, d in point_files(objects, "ca-1").items() if not n.endswith(".mft")}
    objects[path] = resign_manifest(objects[path], listed, bump=-1)
    case.serve_snapshot_only(bed.snapshot_xml(2, objects))
    report = case.fetch()
    assert main_repository(report, case.o).outcome == "snapshot"
    replayed = [p for p in report.publication_points if Reason.FETCH_MANIFEST_REPLAY in p.reasons]
    assert [p.ca_repository for p in replayed] == [bed.rsync + "ca-1/"]


# =========================================================================== the trust anchor


def test_ta_key_mismatch_uses_the_cached_ta(case: Case) -> None:
    """The TA certificate served has another key than the TAL's (here: a CA certificate of
    the repository): refused; the rsync TA URI fails too (no daemon), and the cached TA
    certificate is used; the walk goes on from it."""
    bed = case.bed
    cached = (case.cache / "ta" / "ta.cer").read_bytes()
    [ca1] = [p for p in bed.v[1].objects if p.endswith("/ca-1.cer")]
    case.o.https.files["/ta.cer"] = bed.v[1].objects[ca1]
    report = case.fetch()
    [ta] = report.tals
    assert ta.transport == "cached"
    assert ta.reasons == [Reason.FETCH_TA_KEY_MISMATCH, RSYNC_DOWN, STALE], ta.errors
    assert (case.cache / "ta" / "ta.cer").read_bytes() == cached
    assert main_repository(report, case.o).outcome == "not-modified"
    assert len(report.publication_points) == 4
    assert case.view() == case.last_good


@pytest.mark.parametrize(
    ("reply", "lim", "reason"),
    [
        pytest.param(
            lambda ta: Reply(status=500, body=ta),
            DEFAULT_LIMITS,
            Reason.HTTP_STATUS,
            id="c18-ta-500-with-the-certificate-as-body",
        ),
        pytest.param(
            lambda ta: Reply(body=ta + b"\x00" * 128),
            DEFAULT_LIMITS,
            Reason.OBJECT_MALFORMED,
            id="ta-trailing-bytes",
        ),
        pytest.param(
            lambda ta: Reply(body=b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * (BIG + 1)),
            limits(max_object_size=BIG),
            Reason.FILE_TOO_LARGE,
            id="c6-ta-larger-than-an-object",
        ),
        pytest.param(lambda ta: hang(), FAST, Reason.HTTP_TIMEOUT, id="c31-ta-never-answers"),
        pytest.param(lambda ta: drip(ta, every=0.05), FAST, Reason.HTTP_TIMEOUT, id="c31-ta-drip"),
    ],
)
def test_bad_ta_certificate_uses_the_cached_ta(
    case: Case, reply: Callable[[bytes], Reply], lim: Limits, reason: Reason
) -> None:
    """The TA certificate's https URI fails in some way: the rsync URI is tried (no daemon),
    then the cached TA certificate is used, within the HTTP limits; the walk goes on."""
    cached = (case.cache / "ta" / "ta.cer").read_bytes()
    case.route("/ta.cer", reply(cached))
    started = time.monotonic()
    report = case.fetch(lim)
    assert time.monotonic() - started < 5
    [ta] = report.tals
    assert ta.transport == "cached"
    assert ta.reasons == [reason, RSYNC_DOWN, STALE], ta.errors
    assert (case.cache / "ta" / "ta.cer").read_bytes() == cached
    assert main_repository(report, case.o).outcome == "not-modified"
    assert len(report.publication_points) == 4
    assert case.view() == case.last_good


def test_ta_key_mismatch_on_a_cold_cache_fetches_nothing(case: Case) -> None:
    case.cold()
    bed = case.bed
    [ca1] = [p for p in bed.v[1].objects if p.endswith("/ca-1.cer")]
    case.o.https.files["/ta.cer"] = bed.v[1].objects[ca1]
    report = case.fetch()
    [ta] = report.tals
    assert ta.transport == "failed"
    assert ta.reasons == [Reason.FETCH_TA_KEY_MISMATCH, RSYNC_DOWN]
    assert report.repositories == [] and report.publication_points == []
    assert not report.ok
    assert case.rrdp_paths() == []


# =========================================================================== the rsync fallback


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        pytest.param(
            lambda c: c.serve_notification(
                NOTE2.edit_base(
                    '<snapshot uri="{B}', '<snapshot uri="https://evil.example.net/rrdp/'
                )(c.bed, c.o.https)
            ),
            Reason.RRDP_CROSS_ORIGIN,
            id="c16-snapshot-other-host-rsync-used",
        ),
        pytest.param(
            lambda c: c.route(NOTE, redirect(f"https://localhost:{c.o.https.port}{NOTE}")),
            Reason.HTTP_REDIRECT,
            id="c16-cross-origin-redirect-rsync-used",
        ),
        pytest.param(
            lambda c: c.serve_notification(LOL.encode() + c.v[2].files[NOTE]),
            Reason.XML_DOCTYPE,
            id="c1-doctype-rsync-used",
        ),
    ],
)
def test_rrdp_refused_with_rsync_up_uses_rsync(
    case: Case, setup: Callable[[Case], None], reason: Reason
) -> None:
    """RRDP fails, the rsync daemon answers: the module is fetched over rsync (the
    daemon serves the latest revision, serial 3), draft-ietf-sidrops-prefer-rrdp."""
    case.serve_version(2)
    setup(case)
    with case.o.rsync():
        report = case.fetch()
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome) == ("rsync", "rsync"), r.errors
    assert r.reasons == [reason, RRDP_FAILED], r.errors
    assert r.rsync_modules == [case.o.rsync_base]
    assert case.view() == case.v[3].objects
    assert all(p.consistent for p in report.publication_points), report.publication_points


def test_c19_notification_404_on_a_cold_cache_uses_rsync(case: Case) -> None:
    case.cold()
    serve_files(case.o, {"/ta.cer": case.v[1].files["/ta.cer"]})
    with case.o.rsync():
        report = case.fetch()
    r = main_repository(report, case.o)
    assert (r.transport, r.outcome) == ("rsync", "rsync"), r.errors
    assert r.reasons == [Reason.HTTP_STATUS, RRDP_FAILED]
    assert report.ok
    assert case.view() == case.v[3].objects
    # RFC 9589 file times, as the publisher's rsync tree has them (the testbed's).
    assert view_mtimes(case.cache, case.o.module_dir) == case.o.mtimes()
    assert len(report.publication_points) == 4
    assert all(p.consistent for p in report.publication_points), report.publication_points


def test_ta_over_rsync_when_https_fails(case: Case) -> None:
    del case.o.https.files["/ta.cer"]
    with case.o.rsync():
        report = case.fetch()
    [ta] = report.tals
    assert (ta.transport, ta.reasons) == ("rsync", [Reason.HTTP_STATUS])
    assert ta.uri == case.o.rsync_base + "ta.cer"
    assert main_repository(report, case.o).outcome == "not-modified"


# =========================================================================== two repositories


@dataclass
class TwoBed:
    """A testbed with a second publication point B (its own rsync module ``b`` and its own
    notification on a second HTTPS origin); the main repository A holds the TA."""

    o: Origin
    b: HostileServer
    b_rsync: str
    b_files: dict[str, bytes]
    a_objects: dict[str, bytes]
    b_objects: dict[str, bytes]
    good: Path

    @property
    def b_notify(self) -> str:
        return f"https://{LOOPBACK4}:{self.b.port}/rrdp/notification.xml"

    @property
    def b_module_dir(self) -> str:
        return f"{LOOPBACK4}:{self.o.rsync_port}/b"

    @property
    def b_session(self) -> str:
        return str(parse_notification(self.b_files[NOTE]).session_id.value)

    def repository(self, report: FetchReport, notify: str) -> StoreUpdate:
        [r] = [r for r in report.repositories if r.key.notify == notify]
        return r

    def serve_b(self, files: dict[str, bytes]) -> None:
        serve_files_on(self.b, files)

    def b_snapshot_only(self, data: bytes, serial: int = 2) -> None:
        uri = HttpsUri(f"https://{LOOPBACK4}:{self.b.port}/rrdp/bad/snapshot.xml")
        note = notification_bytes(
            NotificationFile(SessionId(self.b_session), serial, SnapshotRef(uri, sha(data)))
        )
        self.serve_b({**self.b_files, NOTE: note, "/rrdp/bad/snapshot.xml": data})

    def b_delta(self, delta: bytes, snapshot: bytes) -> None:
        base = f"https://{LOOPBACK4}:{self.b.port}/rrdp/"
        note = notification_bytes(
            NotificationFile(
                SessionId(self.b_session),
                2,
                SnapshotRef(HttpsUri(base + "bad/snapshot.xml"), sha(snapshot)),
                (DeltaRef(2, HttpsUri(base + "bad/delta.xml"), sha(delta)),),
            )
        )
        self.serve_b(
            {
                **self.b_files,
                NOTE: note,
                "/rrdp/bad/snapshot.xml": snapshot,
                "/rrdp/bad/delta.xml": delta,
            }
        )

    def b_snapshot_xml(self, serial: int, *elements: bytes) -> bytes:
        body = [
            publish_element(RsyncUri(self.b_rsync + p), d)
            for p, d in sorted(self.b_objects.items())
        ]
        return b"".join(
            [
                snapshot_start(SessionId(self.b_session), serial),
                *body,
                *elements,
                end_tag(FileKind.SNAPSHOT),
            ]
        )


def serve_files_on(srv: HostileServer, files: dict[str, bytes]) -> None:
    srv.files.clear()
    srv.files.update(files)
    srv.routes.clear()


def rrdp_files(rrdp: Path) -> dict[str, bytes]:
    return {
        "/rrdp/" + p.relative_to(rrdp).as_posix(): p.read_bytes()
        for p in rrdp.rglob("*")
        if p.is_file() and not p.name.endswith(".gz")
    }


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoBed]:
    root = tmp_path_factory.mktemp("two-origins")
    tls = make_tls_ca(root / "tls")
    ctx = tls_server_context(str(tls.server_cert), str(tls.server_key))
    with HostileServer(tls=ctx) as a, HostileServer(tls=ctx) as b:
        port = free_port()
        b_rsync = f"rsync://{LOOPBACK4}:{port}/b/"
        b_https = f"https://{LOOPBACK4}:{b.port}/rrdp/"
        o = Origin(root, tls, a, port, cas=3, depth=1, pub_points=((b_rsync, b_https),))
        o.extra_https.append(b)
        o.generate()
        source = o.testbed / point_directory(b_rsync)
        up = root / "up-b"
        publish(
            PublishOptions(
                source_dir=source,
                rsync_base=RsyncUri.parse(b_rsync),
                https_base=HttpsUri.parse(b_https),
                rrdp_dir=up / "rrdp",
                rsync_dir=up / "rsync",
                state_dir=up / "state",
            )
        )
        b_files = rrdp_files(up / "rrdp")
        serve_files_on(b, b_files)
        b_objects = {
            p.relative_to(source).as_posix(): p.read_bytes()
            for p in source.rglob("*")
            if p.is_file()
        }
        good = root / "good" / "cache"
        bed = TwoBed(o, b, b_rsync, b_files, o.objects(), b_objects, good)
        report = fetch(o, good)
        for notify in (o.notify, bed.b_notify):
            r = bed.repository(report, notify)
            assert (r.transport, r.outcome) == ("rrdp", "snapshot"), r
        assert view(good, o.module_dir) == bed.a_objects
        assert view(good, bed.b_module_dir) == b_objects
        assert b_objects and all(p.consistent for p in report.publication_points)
        yield bed


@pytest.fixture
def twocase(tmp_path: Path, two: TwoBed) -> Iterator[tuple[TwoBed, Path]]:
    cache = tmp_path / "a" / "b" / "cache"
    shutil.copytree(two.good, cache, symlinks=True)
    serve_files(two.o, dict(two.o.https.files))
    two.serve_b(two.b_files)
    outside = outside_of(tmp_path, cache)
    origin_tree = snapshot_of_tree(two.o.root)
    yield two, cache
    assert outside_of(tmp_path, cache) == outside
    assert snapshot_of_tree(two.o.root) == origin_tree
    two.b.routes.clear()


def test_c25_snapshot_publishing_into_another_repository_changes_nothing_there(
    twocase: tuple[TwoBed, Path],
) -> None:
    """B's snapshot also publishes objects under A's module (one over an existing ROA of A,
    one new, one over the TA certificate's URI): B's store holds them, but a CA reads only
    from its own repository's store and the view links module ``repo`` to A's store, so A's
    objects in the output view and every publication point read from A are unchanged (one
    store per notification, rrdp-checklist (b)19)."""
    two, cache = twocase
    o = two.o
    victim = sorted(p for p in two.a_objects if p.endswith(".roa"))[0]
    hostile = [
        publish_element(RsyncUri(o.rsync_base + victim), OBJ),
        publish_element(RsyncUri(o.rsync_base + "ca-1/planted.roa"), OBJ),
        publish_element(RsyncUri(o.rsync_base + "ta.cer"), OBJ),
    ]
    two.b_snapshot_only(two.b_snapshot_xml(2, *hostile))
    report = fetch(o, cache)
    assert two.repository(report, o.notify).outcome == "not-modified"
    rb = two.repository(report, two.b_notify)
    # B's store takes it: the objects it names under A's module live in B's store only.
    assert (rb.transport, rb.outcome, rb.added) == ("rrdp", "snapshot", len(hostile)), rb
    assert view(cache, o.module_dir) == two.a_objects
    assert view(cache, two.b_module_dir) == two.b_objects
    assert all(p.consistent for p in report.publication_points), report.publication_points


def test_c25_delta_publishing_into_another_repository_changes_nothing_there(
    twocase: tuple[TwoBed, Path],
) -> None:
    two, cache = twocase
    o = two.o
    delta = b"".join(
        [
            delta_start(SessionId(two.b_session), 2),
            publish_element(RsyncUri(o.rsync_base + "ca-1/planted.roa"), OBJ),
            end_tag(FileKind.DELTA),
        ]
    )
    two.b_delta(delta, two.b_snapshot_xml(2))
    report = fetch(o, cache)
    assert two.repository(report, o.notify).outcome == "not-modified"
    rb = two.repository(report, two.b_notify)
    assert (rb.transport, rb.outcome, rb.added) == ("rrdp", "deltas", 1), rb
    assert view(cache, o.module_dir) == two.a_objects
    assert view(cache, two.b_module_dir) == two.b_objects
    assert all(p.consistent for p in report.publication_points), report.publication_points


@pytest.mark.parametrize("what", ["withdraw", "replace"], ids=["c25-withdraw", "c25-replace"])
def test_c25_delta_withdrawing_another_repositorys_objects_is_refused(
    twocase: tuple[TwoBed, Path], what: str
) -> None:
    """B's delta withdraws (or replaces) A's objects, with their true hashes: B's store does
    not hold them, so the delta does not fit (object-missing) and B takes its own snapshot;
    A's objects are untouched."""
    two, cache = twocase
    o = two.o
    victim = sorted(p for p in two.a_objects if p.endswith(".roa"))[0]
    uri = RsyncUri(o.rsync_base + victim)
    element = (
        withdraw_element(uri, sha(two.a_objects[victim]))
        if what == "withdraw"
        else publish_element(uri, OBJ, sha(two.a_objects[victim]))
    )
    delta = b"".join([delta_start(SessionId(two.b_session), 2), element, end_tag(FileKind.DELTA)])
    two.b_delta(delta, two.b_snapshot_xml(2))
    report = fetch(o, cache)
    assert two.repository(report, o.notify).outcome == "not-modified"
    rb = two.repository(report, two.b_notify)
    assert (rb.transport, rb.outcome, rb.reasons) == ("rrdp", "snapshot", [Reason.OBJECT_MISSING])
    assert view(cache, o.module_dir) == two.a_objects
    assert view(cache, two.b_module_dir) == two.b_objects
    assert all(p.consistent for p in report.publication_points), report.publication_points


def test_c31_a_hanging_repository_does_not_stop_the_other(
    twocase: tuple[TwoBed, Path],
) -> None:
    """B's notification never answers: B keeps its last good copy within the read timeout,
    and A is fetched meanwhile (repositories are updated concurrently, each with its own
    deadline)."""
    two, cache = twocase
    o = two.o
    two.b.route(NOTE, hang())
    started = time.monotonic()
    report = fetch(o, cache, limits=FAST)
    took = time.monotonic() - started
    assert took < 3.5, took
    assert two.repository(report, o.notify).outcome == "not-modified"
    rb = two.repository(report, two.b_notify)
    assert rb.transport == "cached"
    assert rb.reasons == [Reason.HTTP_TIMEOUT, RRDP_FAILED, RSYNC_DOWN, RSYNC_FAILED, STALE]
    assert view(cache, o.module_dir) == two.a_objects
    assert view(cache, two.b_module_dir) == two.b_objects


def test_c32_repository_limit(two: TwoBed, tmp_path: Path) -> None:
    """fetch_max_repositories=1: the second repository (B) is refused, by its notification
    URI; A is fetched, and B's CAs are not visited."""
    cache = tmp_path / "cache"
    report = fetch(two.o, cache, limits=limits(fetch_max_repositories=1))
    assert [(x["reason"], x["uri"]) for x in report.refusals] == [
        (Reason.FETCH_TOO_MANY_REPOSITORIES.value, two.b_notify)
    ]
    assert [r.key.notify for r in report.repositories] == [two.o.notify]
    assert view(cache, two.o.module_dir) == two.a_objects
    assert not (cache / "objects" / two.b_module_dir).exists()
    assert all(p.repository == two.o.notify for p in report.publication_points)


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param("%2e%2e/%2e%2e/%2e%2e/snapshot.xml", id="c29-percent-encoded-dot-dot"),
        pytest.param("x/%2E%2E%2F%2E%2E%2Fsnapshot.xml", id="c29-percent-encoded-slash"),
    ],
)
def test_c29_percent_encoded_snapshot_uri(case: Case, rel: str) -> None:
    """A snapshot URI whose path hides ``..`` behind percent-encoding is an opaque name: it is
    requested as written (never decoded into a path), the snapshot is taken, and nothing is
    written outside the cache (checked by every fetch here); a store keeps no RRDP file under
    a name taken from a URI."""
    snap = case.bed.good_snapshot()
    case.serve_notification(case.bed.notification(2, (rel, snap)), 1, {rel: snap})
    case.took_snapshot(case.fetch(), Reason.PLAN_NO_DELTAS)
    assert case.rrdp_paths() == [NOTE, "/rrdp/" + rel]
    names = {n for _d, dirs, files in os.walk(case.cache) for n in dirs + files}
    assert not any("%" in n or "snapshot" in n for n in names), sorted(names)


def test_c25_ca_of_one_repository_claiming_another_repositorys_module(
    twocase: tuple[TwoBed, Path],
) -> None:
    """B publishes (on its CA's manifest) a CA certificate whose SIA names B's notification
    but a publication point inside A's module, and B's snapshot carries objects for it there:
    the CA is read from B's store only (its own notification's), the claim on A's module is
    refused in the report, and A's objects in the output view are unchanged."""
    two, cache = twocase
    o = two.o
    [b_mft] = [p for p in two.b_objects if p.endswith(".mft")]
    b_point = b_mft.split("/")[0]
    shadow_repo = o.rsync_base + "shadow/"
    now = datetime.now(UTC)
    cert = issue_certificate(
        CertRequest(
            kind=CertKind.CA,
            subject_cn="shadow",
            subject_key=new_key(),
            serial=4242,
            not_before=now - timedelta(hours=1),
            not_after=now + timedelta(days=7),
            resources=ResourceSet(inherit_ip=True, inherit_as=True),
            ca_repository=shadow_repo,
            rpki_manifest=shadow_repo + "shadow.mft",
            rpki_notify=two.b_notify,
            ca_issuers=two.b_rsync + b_point + ".cer",
            crl_uri=two.b_rsync + b_point + "/" + b_point + ".crl",
        ),
        "issuer",
        new_key(),
    )
    objects = dict(two.b_objects)
    objects[f"{b_point}/shadow.cer"] = cert
    listed = {n: d for n, d in point_files(objects, b_point).items() if not n.endswith(".mft")}
    objects[b_mft] = resign_manifest(objects[b_mft], listed)
    planted = [
        publish_element(RsyncUri(shadow_repo + "shadow.mft"), objects[b_mft]),
        publish_element(RsyncUri(shadow_repo + "planted.roa"), OBJ),
    ]
    body = [publish_element(RsyncUri(two.b_rsync + p), d) for p, d in sorted(objects.items())]
    snap = b"".join(
        [
            snapshot_start(SessionId(two.b_session), 2),
            *body,
            *planted,
            end_tag(FileKind.SNAPSHOT),
        ]
    )
    two.b_snapshot_only(snap)
    report = fetch(o, cache)
    rb = two.repository(report, two.b_notify)
    assert (rb.transport, rb.outcome) == ("rrdp", "snapshot"), rb
    shadow_uri = two.b_rsync + f"{b_point}/shadow.cer"
    assert [(x["reason"], x["uri"]) for x in report.refusals] == [
        (Reason.FETCH_MODULE_CLAIMED.value, shadow_uri)
    ]
    [shadow] = [p for p in report.publication_points if p.ca == shadow_uri]
    assert shadow.repository == two.b_notify  # read from B's store, never from A's
    assert view(cache, o.module_dir) == two.a_objects
    assert view(cache, two.b_module_dir) == objects
    others = [p for p in report.publication_points if p is not shadow]
    assert all(p.consistent for p in others), others
