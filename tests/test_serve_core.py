"""The sans-I/O parts of `rpkirepo serve`: request parsing and its limits, path normalisation,
responses (conditional, gzip, ranges, HEAD), revision loading, switching and grace periods.

Also holds :func:`make_rrdp_dir`, the RRDP directory writer the live tests share: it lays files
out as `rpkirepo publish` does (``<session>/<serial>/<random>/{snapshot,delta}.xml`` with ``.gz``
siblings, the notification's ``.gz`` written before the notification, both atomically).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpkirepo.errors import (
    IntegrityError,
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rrdp.model import DeltaRef, NotificationFile, SessionId, Sha256, SnapshotRef
from rpkirepo.rrdp.writer import notification_bytes
from rpkirepo.serve import (
    NEED_DATA,
    FileSlice,
    HttpConnection,
    Request,
    RevisionWatcher,
    error_response,
    load_revision,
    normalise_path,
    respond,
    status_of,
)
from rpkirepo.serve._view import View
from rpkirepo.uri import HttpsUri

SESSION = "e9be21e7-c537-4564-b742-64700978c6b4"
BASE = "https://rrdp.example.net/rrdp/"


# --------------------------------------------------------------------------------------------
# an RRDP directory as publish writes it


@dataclass
class RrdpDir:
    root: Path
    serial: int
    notification: bytes
    files: dict[str, bytes]  # URL path -> content (snapshot and deltas)

    @property
    def snapshot_url(self) -> str:
        return next(p for p in self.files if p.endswith("snapshot.xml"))

    def delta_urls(self) -> list[str]:
        return sorted(p for p in self.files if p.endswith("delta.xml"))


def _atomic(path: Path, data: bytes, mtime: int | None = None) -> None:
    tmp = path.with_name(f".tmp-{path.name}.{random.getrandbits(32):08x}")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def make_rrdp_dir(
    root: Path,
    serial: int,
    *,
    snapshot_size: int = 50_000,
    deltas: int = 2,
    base: str = BASE,
    session: str = SESSION,
    gz: bool = True,
    seed: int | None = None,
) -> RrdpDir:
    """Write (or add) serial ``serial`` to ``root``: a snapshot of ``snapshot_size`` bytes,
    ``deltas`` deltas (serials ``serial-deltas+1 .. serial``), ``.gz`` siblings, and last the
    notification (its ``.gz`` first).  Earlier serials' files stay on disk, as after publish."""
    rng = random.Random(serial if seed is None else seed)
    root.mkdir(parents=True, exist_ok=True)
    rand = f"{rng.getrandbits(64):016x}"
    files: dict[str, bytes] = {}
    base_path = HttpsUri(base).path

    def put(rel: str, data: bytes) -> HttpsUri:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if gz:
            (root / (rel + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        files[base_path + rel] = data
        return HttpsUri(base + rel)

    line = b"<publish uri='rsync://x/a.cer'>" + b"QUJD" * 20 + b"</publish>\n"
    snap = (line * (snapshot_size // len(line) + 1))[:snapshot_size]
    snap_uri = put(f"{session}/{serial}/{rand}/snapshot.xml", snap)
    refs = []
    for s in range(max(1, serial - deltas + 1), serial + 1):
        drand = f"{random.Random(s * 7919).getrandbits(64):016x}"
        data = (
            b"<delta serial='%d'>" % s + bytes(rng.getrandbits(8) for _ in range(300)) + b"</delta>"
        )
        rel = f"{session}/{s}/{drand}/delta.xml"
        if (root / rel).exists():
            data = (root / rel).read_bytes()
            files[base_path + rel] = data
            uri = HttpsUri(base + rel)
        else:
            uri = put(rel, data)
        refs.append(DeltaRef(s, uri, Sha256.of(data)))
    note = notification_bytes(
        NotificationFile(
            SessionId(session), serial, SnapshotRef(snap_uri, Sha256.of(snap)), tuple(refs)
        )
    )
    npath = root / "notification.xml"
    try:
        previous = int(npath.stat().st_mtime)
    except OSError:
        previous = 0
    mtime = max(int(time.time()), previous + 1)
    if gz:
        _atomic(root / "notification.xml.gz", gzip.compress(note, mtime=0), mtime)
    _atomic(npath, note, mtime)
    return RrdpDir(root, serial, note, files)


# --------------------------------------------------------------------------------------------
# request parsing

GET = b"GET /rrdp/notification.xml HTTP/1.1\r\nHost: rrdp.example.net\r\n\r\n"


def parse_all(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Request]:
    conn = HttpConnection(limits)
    conn.feed(data)
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert isinstance(ev, Request)
        out.append(ev)
    return out


def refused(data: bytes, limits: Limits = DEFAULT_LIMITS) -> RpkiRepoError:
    with pytest.raises(RpkiRepoError) as info:
        parse_all(data, limits)
    return info.value


def test_simple_get() -> None:
    [req] = parse_all(GET)
    assert req.method == "GET"
    assert req.path == "/rrdp/notification.xml"
    assert req.version == "HTTP/1.1"
    assert req.headers == {"host": "rrdp.example.net"}
    assert req.keep_alive


def test_one_byte_at_a_time_gives_the_same_requests() -> None:
    stream = (
        GET
        + b"\r\nHEAD /a HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nX: 1\r\nx: 2\r\n\r\n"
        + b"GET /b?q=1 HTTP/1.0\r\n\r\n"
    )
    whole = parse_all(stream)
    conn = HttpConnection()
    got = []
    for i in range(len(stream)):
        conn.feed(stream[i : i + 1])
        while (ev := conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Request)
            got.append(ev)
    assert got == whole
    assert [r.path for r in got] == ["/rrdp/notification.xml", "/a", "/b"]
    assert got[1].headers["x"] == "1, 2"
    assert not got[2].keep_alive  # HTTP/1.0 without keep-alive


def test_connection_close_and_http10_keep_alive() -> None:
    [req] = parse_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert not req.keep_alive
    [req] = parse_all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert req.keep_alive


def test_nothing_is_read_after_connection_close() -> None:
    reqs = parse_all(
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    )
    assert [r.path for r in reqs] == ["/a"]


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", 405, Reason.HTTP_METHOD_NOT_ALLOWED),
        (b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", 405, Reason.HTTP_METHOD_NOT_ALLOWED),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_REQUEST),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, Reason.HTTP_VERSION),
        (b"GET / HTTP/1.1 x\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_REQUEST),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_REQUEST),
        (b"GET / HTTP/1.1\r\n\r\n", 400, Reason.HTTP_BAD_HEADER),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, Reason.HTTP_BAD_HEADER),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, Reason.HTTP_BAD_HEADER),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400, Reason.HTTP_BAD_HEADER),
        (b"GET / HTTP/1.1\r\nHost: h\x00x\r\n\r\n", 400, Reason.HTTP_BAD_HEADER),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            Reason.HTTP_REQUEST_BODY,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            400,
            Reason.HTTP_REQUEST_BODY,
        ),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_TARGET),
        (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_TARGET),
        (b"GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_TARGET),
        (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", 400, Reason.HTTP_BAD_TARGET),
        (b"GET /\nHTTP/1.1\r\n\r\n", 400, Reason.HTTP_BAD_REQUEST),
    ],
)
def test_malformed_requests_are_refused(data: bytes, status: int, reason: Reason) -> None:
    exc = refused(data)
    assert exc.reason is reason
    assert status_of(exc) == status
    resp = error_response(exc, 0.0)
    assert resp.head.startswith(b"HTTP/1.1 %d " % status)
    assert resp.close and b"Connection: close\r\n" in resp.head
    if status == 405:
        assert b"Allow: GET, HEAD\r\n" in resp.head


def test_the_connection_is_dead_after_an_error() -> None:
    conn = HttpConnection()
    with pytest.raises(RemoteProtocolError):
        conn.feed(b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not conn.wants_input
    with pytest.raises(LocalProtocolError):
        conn.feed(GET)
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_request_line_limit_414_even_when_dripped() -> None:
    limits = DEFAULT_LIMITS.override({"serve_max_request_line": 100})
    line = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert status_of(refused(line, limits)) == 414
    conn = HttpConnection(limits)
    with pytest.raises(LimitExceeded) as info:
        for i in range(len(line)):
            conn.feed(line[i : i + 1])
    assert info.value.context["limit"] == "serve_max_request_line"
    assert len(conn._buf) <= 102


def test_header_limits_431() -> None:
    limits = DEFAULT_LIMITS.override({"serve_max_header_bytes": 1000, "serve_max_header_count": 10})
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    exc = refused(big, limits)
    assert (status_of(exc), exc.context["limit"]) == (431, "serve_max_header_bytes")
    many = (
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n"
    )
    exc = refused(many, limits)
    assert (status_of(exc), exc.context["limit"]) == (431, "serve_max_header_count")
    # an unfinished head is refused as soon as it is over the cap, not when it ends
    conn = HttpConnection(limits)
    with pytest.raises(LimitExceeded):
        conn.feed(big[:1100])


def test_pipelined_requests_are_bounded() -> None:
    limits = DEFAULT_LIMITS.override({"serve_max_pipelined": 4})
    conn = HttpConnection(limits)
    conn.feed(GET * 10)
    assert conn.pending == 4
    assert not conn.wants_input  # the adapter stops reading
    seen = 0
    while conn.next_event() is not NEED_DATA:
        seen += 1
    assert seen == 10 and conn.wants_input


def test_empty_lines_before_a_request_are_skipped_but_bounded() -> None:
    assert len(parse_all(b"\r\n\r\n" + GET)) == 1
    assert refused(b"\r\n" * 20 + GET).reason is Reason.HTTP_BAD_REQUEST


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/rrdp/notification.xml", "/rrdp/notification.xml"),
        ("/rrdp/notification.xml?x=1", "/rrdp/notification.xml"),
        ("https://rrdp.example.net/rrdp/a.xml", "/rrdp/a.xml"),
        ("/rrdp/%61.xml", "/rrdp/a.xml"),
        ("/rrdp/../etc/passwd", None),
        ("/rrdp/%2e%2e/etc/passwd", None),
        ("/rrdp/%2E%2E/%2e%2e/etc/passwd", None),
        ("/rrdp/./a.xml", None),
        ("/rrdp//a.xml", None),
        ("/rrdp/a.xml%00.gz", None),
        ("/rrdp/%5c..%5cetc", None),
        ("/rrdp/..", None),
        ("/rrdp/%c3%a9", None),
        ("/rrdp/%252e%252e/x", "/rrdp/%2e%2e/x"),  # decoded once: a literal name, not a dot-dot
    ],
)
def test_normalise_path(target: str, path: str | None) -> None:
    assert normalise_path(target) == path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_fuzz_only_our_errors_escape(data: bytes, chunk: int) -> None:
    limits = DEFAULT_LIMITS.override(
        {"serve_max_request_line": 200, "serve_max_header_bytes": 300, "serve_max_header_count": 8}
    )
    conn = HttpConnection(limits)
    try:
        for i in range(0, len(data), chunk):
            conn.feed(data[i : i + chunk])
            while (ev := conn.next_event()) is not NEED_DATA:
                assert isinstance(ev, Request)
                assert ev.method in ("GET", "HEAD")
                assert ev.path is None or ".." not in ev.path.split("/")
    except RpkiRepoError as exc:
        assert 400 <= status_of(exc) <= 505


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "HEAD"]),
            st.text(alphabet="abcxyz/.%2e", max_size=30),
            st.lists(st.tuples(_token, _token), max_size=5),
        ),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=20),
)
def test_fuzz_chunking_never_changes_the_result(
    reqs: list[tuple[str, str, list[tuple[str, str]]]], cuts: list[int]
) -> None:
    stream = b"".join(
        f"{m} /{p} HTTP/1.1\r\nHost: h\r\n".encode()
        + b"".join(f"x-{k}: {v}\r\n".encode() for k, v in hs)
        + b"\r\n"
        for m, p, hs in reqs
    )

    def run(pieces: list[bytes]) -> list[Request] | str:
        conn = HttpConnection()
        out: list[Request] = []
        try:
            for piece in pieces:
                conn.feed(piece)
                while (ev := conn.next_event()) is not NEED_DATA:
                    assert isinstance(ev, Request)
                    out.append(ev)
        except RpkiRepoError as exc:
            return exc.reason.value
        return out

    pieces, pos = [], 0
    for c in cuts:
        pieces.append(stream[pos : pos + c])
        pos += c
    pieces.append(stream[pos:])
    assert run(pieces) == run([stream])


# --------------------------------------------------------------------------------------------
# revisions and responses


@pytest.fixture
def repo(tmp_path: Path) -> RrdpDir:
    return make_rrdp_dir(tmp_path / "rrdp", 3, snapshot_size=60_000, deltas=2)


def req(path: str, method: str = "GET", **headers: str) -> Request:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    [r] = parse_all(f"{method} {path} HTTP/1.1\r\nHost: h\r\n{lines}\r\n".encode())
    return r


def body_of(resp_body: bytes | FileSlice | None) -> bytes:
    if resp_body is None:
        return b""
    if isinstance(resp_body, bytes):
        return resp_body
    return resp_body.file.pread(resp_body.count, resp_body.offset)


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.lower() == name.lower():
            return v.strip()
    return None


def view_of(repo: RrdpDir) -> View:
    w = RevisionWatcher(repo.root, grace=60)
    rev = w.load()
    assert rev is not None
    w.switch(rev)
    return w.view


def test_revision_serves_exactly_the_notification_and_its_files(repo: RrdpDir) -> None:
    rev = load_revision(repo.root)
    assert rev.base_path == "/rrdp/"
    assert (rev.serial, rev.session_id) == (3, SESSION)
    assert set(rev.entries) == {"/rrdp/notification.xml", *repo.files}
    view = view_of(repo)
    now = time.time()
    for path, data in [("/rrdp/notification.xml", repo.notification), *repo.files.items()]:
        r = respond(req(path), view, now)
        assert r.status == 200
        assert body_of(r.body) == data
        assert header(r.head, "content-length") == str(len(data))
        assert header(r.head, "content-type") == "application/xml"
    snap = respond(req(repo.snapshot_url), view, now)
    assert isinstance(snap.body, FileSlice)  # snapshots go out with sendfile, not from memory
    assert header(snap.head, "cache-control") == "public, max-age=86400, immutable"
    assert (
        header(snap.head, "etag")
        == f'"{hashlib.sha256(repo.files[repo.snapshot_url]).hexdigest()}"'
    )
    note = respond(req("/rrdp/notification.xml"), view, now)
    assert isinstance(note.body, bytes)
    assert header(note.head, "cache-control") == "public, max-age=60"
    delta = respond(req(repo.delta_urls()[0]), view, now)
    assert isinstance(delta.body, bytes) and delta.kind == "delta"


def test_unknown_paths_are_404_without_touching_the_filesystem(
    repo: RrdpDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = view_of(repo)

    def no_fs(*a: object, **k: object) -> None:
        raise AssertionError("filesystem touched")

    for name in ("open", "stat", "lstat", "scandir", "listdir"):
        monkeypatch.setattr(os, name, no_fs)
    for target in [
        "/rrdp/../notification.xml",
        "/rrdp/%2e%2e/%2e%2e/etc/passwd",
        "/rrdp/notification.xml%00",
        "/rrdp/" + SESSION + "/3/",
        "/etc/passwd",
        "/rrdp/notification.xml.gz",
        "/rrdp/snapshot.xml",
    ]:
        r = respond(req(target), view, 0.0)
        assert r.status == 404, target


def test_gzip_from_the_sibling_with_vary(repo: RrdpDir) -> None:
    view = view_of(repo)
    for path, data in [
        ("/rrdp/notification.xml", repo.notification),
        (repo.snapshot_url, repo.files[repo.snapshot_url]),
    ]:
        r = respond(req(path, accept_encoding="br, gzip;q=0.8"), view, 0.0)
        assert header(r.head, "content-encoding") == "gzip"
        assert header(r.head, "vary") == "Accept-Encoding"
        assert gzip.decompress(body_of(r.body)) == data
        assert header(
            r.head,
            "etag",
        ).endswith('-gz"')  # type: ignore[union-attr]
        for ae in ("gzip;q=0", "identity", "br", ""):
            plain = respond(req(path, accept_encoding=ae), view, 0.0)
            assert header(plain.head, "content-encoding") is None, ae
            assert body_of(plain.body) == data
        star = respond(req(path, accept_encoding="*"), view, 0.0)
        assert header(star.head, "content-encoding") == "gzip"


def test_conditional_requests(repo: RrdpDir) -> None:
    view = view_of(repo)
    first = respond(req("/rrdp/notification.xml"), view, 0.0)
    etag = header(first.head, "etag")
    lm = header(first.head, "last-modified")
    assert etag and lm
    r = respond(req("/rrdp/notification.xml", if_none_match=etag), view, 0.0)
    assert r.status == 304 and r.body is None and header(r.head, "etag") == etag
    assert header(r.head, "content-length") is None
    assert (
        respond(req("/rrdp/notification.xml", if_none_match='"x", W/' + etag), view, 0.0).status
        == 304
    )
    assert respond(req("/rrdp/notification.xml", if_none_match="*"), view, 0.0).status == 304
    assert respond(req("/rrdp/notification.xml", if_none_match='"other"'), view, 0.0).status == 200
    assert respond(req("/rrdp/notification.xml", if_modified_since=lm), view, 0.0).status == 304
    older = "Thu, 01 Jan 2015 00:00:00 GMT"
    assert respond(req("/rrdp/notification.xml", if_modified_since=older), view, 0.0).status == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3)
    r = respond(
        req("/rrdp/notification.xml", if_none_match='"other"', if_modified_since=lm), view, 0.0
    )
    assert r.status == 200
    assert (
        respond(req("/rrdp/notification.xml", if_modified_since="garbage"), view, 0.0).status == 200
    )
    # the gzip representation has its own ETag
    gz = respond(
        req("/rrdp/notification.xml", accept_encoding="gzip", if_none_match=etag), view, 0.0
    )
    assert gz.status == 200


def test_ranges_on_snapshots(repo: RrdpDir) -> None:
    view = view_of(repo)
    data = repo.files[repo.snapshot_url]
    size = len(data)
    for spec, (a, b) in [
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, size - 1)),
        ("bytes=-500", (size - 500, size - 1)),
        ("bytes=10-999999999", (10, size - 1)),
    ]:
        r = respond(req(repo.snapshot_url, range=spec), view, 0.0)
        assert r.status == 206, spec
        assert header(r.head, "content-range") == f"bytes {a}-{b}/{size}"
        assert body_of(r.body) == data[a : b + 1]
        assert header(r.head, "content-length") == str(b - a + 1)
    r = respond(req(repo.snapshot_url, range=f"bytes={size}-"), view, 0.0)
    assert r.status == 416 and header(r.head, "content-range") == f"bytes */{size}"
    # several ranges, a bad unit, or a failed If-Range: the whole file
    for hdrs in [
        {"range": "bytes=0-1,5-6"},
        {"range": "items=0-1"},
        {"range": "bytes=0-1", "if_range": '"stale"'},
    ]:
        r = respond(req(repo.snapshot_url, **hdrs), view, 0.0)
        assert r.status == 200 and body_of(r.body) == data
    etag = header(respond(req(repo.snapshot_url), view, 0.0).head, "etag")
    assert (
        respond(req(repo.snapshot_url, range="bytes=0-1", if_range=etag or ""), view, 0.0).status
        == 206
    )
    # no ranges on the notification
    assert respond(req("/rrdp/notification.xml", range="bytes=0-1"), view, 0.0).status == 200


def test_head_has_the_get_headers_and_no_body(repo: RrdpDir) -> None:
    view = view_of(repo)
    for path in ("/rrdp/notification.xml", repo.snapshot_url):
        g = respond(req(path), view, 0.0)
        h = respond(req(path, "HEAD"), view, 0.0)
        assert h.head == g.head and h.body is None and h.length == 0


def test_healthz(repo: RrdpDir) -> None:
    assert respond(req("/healthz"), View({}), 0.0).status == 503
    r = respond(req("/healthz"), view_of(repo), 0.0)
    assert r.status == 200 and body_of(r.body) == b"ok serial 3\n"


def test_a_notification_naming_a_missing_file_is_not_switched_to(repo: RrdpDir) -> None:
    w = RevisionWatcher(repo.root, grace=60)
    rev = w.load()
    assert rev is not None
    w.switch(rev)
    nxt = make_rrdp_dir(repo.root, 4)
    (repo.root / nxt.delta_urls()[-1].removeprefix("/rrdp/")).unlink()
    assert w.needs_load()
    assert w.load() is None and w.failures == 1
    assert w.view.serial == 3  # the last good revision stays
    with pytest.raises(RpkiRepoError) as info:
        load_revision(repo.root)
    assert info.value.reason is Reason.SERVE_REVISION_UNLOADABLE


def test_a_delta_that_does_not_match_its_hash_is_refused(repo: RrdpDir) -> None:
    path = repo.root / repo.delta_urls()[0].removeprefix("/rrdp/")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(IntegrityError):
        load_revision(repo.root)


def test_a_stale_gzip_sibling_is_refused(repo: RrdpDir) -> None:
    (repo.root / "notification.xml.gz").write_bytes(gzip.compress(b"<other/>"))
    with pytest.raises(RpkiRepoError):
        load_revision(repo.root)


def test_a_uri_outside_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.xml").write_bytes(b"x" * 200)
    rrdp = tmp_path / "rrdp"
    rrdp.mkdir()
    note = notification_bytes(
        NotificationFile(
            SessionId(SESSION), 1,
            SnapshotRef(HttpsUri("https://h/secret.xml"), Sha256.of(b"x" * 200)),
        )
    )  # fmt: skip
    (rrdp / "notification.xml").write_bytes(note)
    with pytest.raises(RpkiRepoError) as info:
        load_revision(rrdp)
    assert info.value.reason is Reason.SERVE_REVISION_UNLOADABLE


def test_switch_grace_and_expiry(repo: RrdpDir) -> None:
    w = RevisionWatcher(repo.root, grace=100)
    rev3 = w.load()
    assert rev3 is not None
    w.switch(rev3, now=1000.0)
    old_snapshot = repo.snapshot_url
    old_delta = repo.delta_urls()[0]  # serial 2: drops out with deltas=2
    nxt = make_rrdp_dir(repo.root, 4, deltas=2)
    rev4 = w.load()
    assert rev4 is not None and rev4.serial == 4
    w.switch(rev4, now=1010.0)
    assert w.view.serial == 4
    assert old_snapshot in w.view.entries and old_delta in w.view.entries  # grace
    assert nxt.snapshot_url in w.view.entries
    assert respond(req(old_snapshot), w.view, 1010.0).status == 200
    # a retired file that leaves the disk leaves the view at the next expiry
    (repo.root / old_delta.removeprefix("/rrdp/")).unlink()
    assert w.expire(1011.0) == 1
    assert old_delta not in w.view.entries and old_snapshot in w.view.entries
    # and the grace period ends
    assert w.expire(1111.0) == 1
    assert old_snapshot not in w.view.entries
    assert set(w.view.entries) == {"/rrdp/notification.xml", *nxt.files}


def test_unchanged_files_are_taken_over_without_reloading(repo: RrdpDir) -> None:
    rev1 = load_revision(repo.root)
    _atomic(repo.root / "notification.xml", repo.notification, int(time.time()) + 5)  # rewritten
    rev2 = load_revision(repo.root, previous=rev1)
    assert rev2.signature != rev1.signature
    assert rev2.entries[repo.snapshot_url] is rev1.entries[repo.snapshot_url]  # same inode
    kept = repo.delta_urls()[-1]
    assert rev2.entries[kept].identity.data == rev1.entries[kept].identity.data
    # a snapshot replaced in place (new inode) is opened again
    snap = repo.root / repo.snapshot_url.removeprefix("/rrdp/")
    _atomic(snap, snap.read_bytes())
    rev3 = load_revision(repo.root, previous=rev2)
    assert rev3.entries[repo.snapshot_url] is not rev2.entries[repo.snapshot_url]


def test_snapshot_larger_than_the_memory_cap_is_not_read(tmp_path: Path) -> None:
    limits = DEFAULT_LIMITS.override({"serve_memory_file_max": 1000})
    repo = make_rrdp_dir(tmp_path / "rrdp", 1, snapshot_size=5000, deltas=1)
    rev = load_revision(repo.root, limits)
    assert rev.entries[repo.snapshot_url].identity.file is not None
    assert rev.entries[repo.delta_urls()[0]].identity.data is not None


def test_limits_doc_names_every_serve_limit() -> None:
    names = [n for n in Limits.names() if n.startswith("serve_")]
    assert len(names) == 11
    with pytest.raises(RpkiRepoError):
        DEFAULT_LIMITS.override({"serve_max_pipelined": -1})


# --------------------------------------------------------------------------------------------
# the sans-I/O rule of docs/architecture.md, for serve's core modules


SERVE_CORE = ("_http", "_respond", "_view", "_fast")


@pytest.mark.parametrize("name", SERVE_CORE)
def test_serve_core_modules_do_no_io(name: str) -> None:
    import ast

    from test_architecture import FORBIDDEN_CALLS, FORBIDDEN_MODULES

    path = Path(__file__).resolve().parents[1] / "src" / "rpkirepo" / "serve" / f"{name}.py"
    forbidden = FORBIDDEN_MODULES | {"rpkirepo.serve._revision", "rpkirepo.serve._server"}
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for n in names:
            imported.append(n)
            top = {n, n.split(".")[0], ".".join(n.split(".")[:2]), ".".join(n.split(".")[:3])}
            line = getattr(node, "lineno", "?")
            assert not (top & forbidden), f"{path.name}:{line} imports {n}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, (
                f"{path.name}:{node.lineno} calls {node.func.id}"
            )
    assert imported  # the rule saw the module's imports


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::]:443", ("::", 443)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:443", ("0.0.0.0", 443)),
    ],
)
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    from rpkirepo.serve.command import parse_address

    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["::1:8443", "8080", "[::1]", "host:99999", "a:b", ""])
def test_parse_address_refuses(text: str) -> None:
    from rpkirepo.serve.command import parse_address

    with pytest.raises(RpkiRepoError) as info:
        parse_address(text)
    assert info.value.reason is Reason.USAGE
