"""httpget: the streaming HTTP client's guarantees against a scripted server on loopback."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError
from rpkirepo.httpget import HttpOptions, Validators, http_get, read_all, same_origin
from rpkirepo.limits import DEFAULT_LIMITS


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Send the body in pieces of this size with this pause between them.
    drip: tuple[int, float] | None = None


Script = dict[str, Callable[[dict[str, str]], Reply]]


@pytest.fixture
def server() -> Iterator[tuple[str, Script, list[dict[str, str]]]]:
    script: Script = {}
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers = dict(self.headers.items())
            seen.append({"path": self.path, **headers})
            make = script.get(self.path)
            reply = make(headers) if make else Reply(404, b"<notfound/>")
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            try:
                if reply.drip is None:
                    self.wfile.write(reply.body)
                    return
                size, pause = reply.drip
                for i in range(0, len(reply.body), size):
                    self.wfile.write(reply.body[i : i + size])
                    self.wfile.flush()
                    time.sleep(pause)
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            return

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", script, seen
    finally:
        srv.shutdown()
        srv.server_close()


OPTS = HttpOptions()


def get(url: str, max_size: int = 1 << 20, **kw: object) -> bytes:
    with http_get(url, options=kw.pop("options", OPTS), max_size=max_size, **kw) as r:  # type: ignore[arg-type]
        return read_all(r)


def test_plain_and_gzip_bodies(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, seen = server
    body = b"<x/>" * 10000
    script["/plain"] = lambda h: Reply(body=body)
    script["/gz"] = lambda h: Reply(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    two = gzip.compress(body[:7]) + gzip.compress(body[7:])
    script["/members"] = lambda h: Reply(body=two, headers={"Content-Encoding": "gzip"})
    assert get(base + "/plain") == body
    assert get(base + "/gz") == body
    assert get(base + "/members") == body, "several gzip members are one body (RFC 1952)"
    assert seen[0]["Accept-Encoding"] == "gzip"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(gzip.compress(b"<x/>" * 100) + b"junk", id="trailing-junk"),
        pytest.param(gzip.compress(b"<x/>" * 100)[:-6], id="truncated"),
        pytest.param(b"\x1f\x8b\x08\x00" + b"\x00" * 40, id="corrupt"),
        pytest.param(b"", id="empty"),
    ],
)
def test_bad_gzip_is_refused(
    server: tuple[str, Script, list[dict[str, str]]], payload: bytes
) -> None:
    base, script, _ = server
    script["/bad"] = lambda h: Reply(body=payload, headers={"Content-Encoding": "gzip"})
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/bad")
    assert exc.value.reason == Reason.HTTP_CONTENT_ENCODING


def test_gzip_bomb_stops_at_the_cap(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, _ = server
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9)  # 64 MiB of spaces in ~64 KiB
    script["/bomb"] = lambda h: Reply(body=bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(LimitExceeded) as exc:
        get(base + "/bomb", max_size=1 << 20)
    assert exc.value.reason == Reason.FILE_TOO_LARGE
    assert len(bomb) < 1 << 20


def test_unknown_content_coding_is_refused(
    server: tuple[str, Script, list[dict[str, str]]],
) -> None:
    base, script, _ = server
    script["/br"] = lambda h: Reply(body=b"x", headers={"Content-Encoding": "br"})
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/br")
    assert exc.value.reason == Reason.HTTP_CONTENT_ENCODING


def test_status_other_than_200_is_not_read(
    server: tuple[str, Script, list[dict[str, str]]],
) -> None:
    base, script, _ = server
    script["/err"] = lambda h: Reply(500, b"<notification/>")
    for path in ("/err", "/missing"):
        with pytest.raises(RemoteProtocolError) as exc:
            get(base + path)
        assert exc.value.reason == Reason.HTTP_STATUS


def test_conditional_request_and_304(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, seen = server

    def cond(h: dict[str, str]) -> Reply:
        if h.get("If-None-Match") == '"v1"':
            return Reply(304)
        return Reply(body=b"data", headers={"ETag": '"v1"', "Last-Modified": "Sun, 22 Nov 2026"})

    script["/n"] = cond
    with http_get(base + "/n", options=OPTS, max_size=100) as r:
        assert read_all(r) == b"data"
        validators = r.validators
    assert validators == Validators('"v1"', "Sun, 22 Nov 2026")
    with http_get(base + "/n", options=OPTS, max_size=100, validators=validators) as r:
        assert r.not_modified and read_all(r) == b""
    assert seen[-1]["If-Modified-Since"] == "Sun, 22 Nov 2026"
    # A 304 nobody asked for is an error.
    script["/x"] = lambda h: Reply(304)
    with pytest.raises(RemoteProtocolError):
        get(base + "/x")


def test_redirects_same_origin_only(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, _ = server
    script["/a"] = lambda h: Reply(302, headers={"Location": "/b"})
    script["/b"] = lambda h: Reply(body=b"here")
    assert get(base + "/a") == b"here"
    port = int(base.rsplit(":", 1)[1])
    script["/away"] = lambda h: Reply(301, headers={"Location": f"http://localhost:{port}/b"})
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/away")
    assert exc.value.reason == Reason.HTTP_REDIRECT
    script["/loop"] = lambda h: Reply(307, headers={"Location": "/loop"})
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/loop")
    assert exc.value.reason == Reason.HTTP_TOO_MANY_REDIRECTS
    assert same_origin("https://a.example/x", "HTTPS://A.example:443/y")
    assert not same_origin("https://a.example/x", "http://a.example/x")


def test_slow_drip_hits_the_file_deadline(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, _ = server
    script["/slow"] = lambda h: Reply(body=b"x" * 200, drip=(1, 0.05))
    opts = HttpOptions(limits=DEFAULT_LIMITS.override({"http_file_deadline": 1}))
    started = time.monotonic()
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/slow", options=opts)
    assert exc.value.reason == Reason.HTTP_TIMEOUT
    assert time.monotonic() - started < 5


def test_silence_hits_the_read_timeout(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, _ = server
    script["/stall"] = lambda h: Reply(body=b"x" * 10, drip=(5, 3.0))
    opts = HttpOptions(limits=DEFAULT_LIMITS.override({"http_read_timeout": 1}))
    with pytest.raises(RemoteProtocolError) as exc:
        get(base + "/stall", options=opts)
    assert exc.value.reason == Reason.HTTP_TIMEOUT


def test_connection_refused_and_raw_sink(server: tuple[str, Script, list[dict[str, str]]]) -> None:
    base, script, _ = server
    with pytest.raises(RemoteProtocolError) as exc:
        get("http://127.0.0.1:9/")
    assert exc.value.reason == Reason.HTTP_CONNECT
    body = zlib.compress(b"abc")  # zlib, not gzip: the raw sink sees the wire bytes whatever
    script["/raw"] = lambda h: Reply(body=body)
    got: list[bytes] = []
    with http_get(base + "/raw", options=OPTS, max_size=100) as r:
        r.raw_sink = got.append
        assert read_all(r) == body
    assert b"".join(got) == body
