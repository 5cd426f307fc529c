"""`rpkirepo serve` on loopback: real clients (http.client, curl, raw sockets, TLS) against the
real asyncio server, hostile ones included, and the CLI in a child process (config table,
workers, SIGHUP, SIGTERM).

The in-process server runs on its own event loop in a thread, on ports chosen by the kernel, with
limits shrunk so that timeouts show within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import importlib.util
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from peers import ipv6_loopback_available, make_tls_ca
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.serve import ServeOptions, Server
from rpkirepo.serve._server import _loop_factory
from test_serve_core import RrdpDir, make_rrdp_dir

FAST = DEFAULT_LIMITS.override(
    {
        "serve_header_timeout": 2,
        "serve_idle_timeout": 2,
        "serve_send_timeout": 5,
    }
)


@contextlib.contextmanager
def running(
    rrdp: Path,
    limits: Limits = FAST,
    *,
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 0),),
    loop: str = "asyncio",
    **kw: object,
) -> Iterator[Server]:
    opts = ServeOptions(
        rrdp_dir=rrdp,
        listen=listen,
        limits=limits,
        poll_interval=0.2,
        metrics_listen=("127.0.0.1", 0),
        **kw,  # type: ignore[arg-type]
    )
    ready = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        async def amain() -> None:
            srv = Server(opts)
            box["server"], box["loop"] = srv, asyncio.get_running_loop()
            try:
                await srv.start()
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                raise
            ready.set()
            await srv.wait_stopped()

        with (
            contextlib.suppress(Exception),
            asyncio.Runner(loop_factory=_loop_factory(loop)) as runner,
        ):
            runner.run(amain())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "server did not start"
    if "error" in box:
        raise AssertionError(f"server failed to start: {box['error']!r}")
    server = box["server"]
    ev_loop = box["loop"]
    assert isinstance(server, Server) and isinstance(ev_loop, asyncio.AbstractEventLoop)
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # the test may have stopped it already
            ev_loop.call_soon_threadsafe(server.request_stop)
        thread.join(15)
        assert not thread.is_alive(), "server did not stop"


#: Both event loops the server runs on: the stdlib one (sendfile for plain TCP) and uvloop (pread
#: chunks for every body from disk), when installed.
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


@pytest.fixture
def repo(tmp_path: Path) -> RrdpDir:
    return make_rrdp_dir(tmp_path / "rrdp", 5, snapshot_size=300_000, deltas=3)


def port_of(server: Server) -> int:
    return server.addresses[0][1]


def metrics_text(server: Server) -> str:
    assert server.metrics_address is not None
    conn = http.client.HTTPConnection(*server.metrics_address, timeout=5)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200
    text = resp.read().decode()
    conn.close()
    return text


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def raw(port: int, data: bytes, *, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes (or ``timeout``)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


# --------------------------------------------------------------------------------------------
# ordinary clients


@pytest.mark.parametrize("loop", LOOPS)
def test_http_client_keep_alive_serves_every_file(loop: str, repo: RrdpDir) -> None:
    with running(repo.root, loop=loop) as server:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=5)
        conn.connect()
        sock = conn.sock
        for path, data in [("/rrdp/notification.xml", repo.notification), *repo.files.items()] * 2:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200, path
            assert resp.read() == data
            assert resp.getheader("Content-Type") == "application/xml"
        assert conn.sock is sock  # one connection throughout (keep-alive)
        conn.request("GET", "/rrdp/notification.xml", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Encoding") == "gzip"
        assert gzip.decompress(resp.read()) == repo.notification
        etag = resp.getheader("ETag")
        conn.request(
            "GET",
            "/rrdp/notification.xml",
            headers={"Accept-Encoding": "gzip", "If-None-Match": etag or ""},
        )
        resp = conn.getresponse()
        assert resp.status == 304 and resp.read() == b""
        conn.request("HEAD", repo.snapshot_url)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == str(
            len(repo.files[repo.snapshot_url])
        )
        assert resp.read() == b""
        conn.request("GET", repo.snapshot_url, headers={"Range": "bytes=1000-1999"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == repo.files[repo.snapshot_url][1000:2000]
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok serial 5\n"
        conn.close()
        text = metrics_text(server)
        assert metric(text, "rpkirepo_serve_requests_total", kind="notification", status="304") == 1
        assert metric(text, "rpkirepo_serve_requests_total", kind="snapshot", status="206") == 1
        assert metric(text, "rpkirepo_serve_requests_total", kind="snapshot", status="200") == 3
        assert (
            metric(text, "rpkirepo_serve_response_bytes_total", kind="snapshot")
            == 2 * 300_000 + 1000
        )
        assert 0 < metric(text, "rpkirepo_serve_not_modified_ratio") < 1


def test_curl(repo: RrdpDir, tmp_path: Path) -> None:
    curl = require_peer("curl")
    with running(repo.root) as server:
        base = f"http://127.0.0.1:{port_of(server)}"
        out = tmp_path / "out"

        def run(*args: str) -> str:
            proc = subprocess.run(
                [curl, "-sS", "--noproxy", "*", "--max-time", "10", *args],
                capture_output=True, text=True, timeout=20, check=True,
            )  # fmt: skip
            return proc.stdout

        run("--compressed", "-o", str(out), base + "/rrdp/notification.xml")
        assert out.read_bytes() == repo.notification
        snap = repo.files[repo.snapshot_url]
        run("-r", "100-199", "-o", str(out), base + repo.snapshot_url)
        assert out.read_bytes() == snap[100:200]
        # two files over one connection
        codes = run("-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                    base + repo.snapshot_url, base + repo.delta_urls()[0])  # fmt: skip
        assert codes.splitlines() == ["200 1", "200 0"]
        head = run("-I", base + repo.snapshot_url)
        assert "accept-ranges: bytes" in head.lower()
        assert run("-o", "/dev/null", "-w", "%{http_code}", "--path-as-is",
                   base + "/rrdp/../../etc/passwd") == "404"  # fmt: skip


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_with_a_throwaway_ca_ipv4_and_ipv6(loop: str, repo: RrdpDir, tmp_path: Path) -> None:
    from peers import https_get

    tls = make_tls_ca(tmp_path / "tls")
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 0),)
    if ipv6_loopback_available():
        listen += (("::1", 0),)
    with running(
        repo.root, listen=listen, loop=loop, tls_cert=tls.server_cert, tls_key=tls.server_key
    ) as server:
        for host, port in server.addresses:
            status, _h, body = https_get(tls, port, "/rrdp/notification.xml", address=host)
            assert status == 200 and body == repo.notification
            status, _h, body = https_get(tls, port, repo.snapshot_url, address=host)
            assert body == repo.files[repo.snapshot_url]  # the TLS path: pread, not sendfile
            status, _headers, body = https_get(
                tls, port, repo.snapshot_url, {"Range": "bytes=-10"}, address=host
            )
            assert status == 206 and body == repo.files[repo.snapshot_url][-10:]
        # a client that does not trust the CA is refused by its own TLS stack
        ctx = ssl.create_default_context()
        with (
            socket.create_connection(("127.0.0.1", port_of(server)), timeout=5) as s,
            pytest.raises(ssl.SSLError),
        ):
            ctx.wrap_socket(s, server_hostname="localhost")


def test_reload_picks_up_a_renewed_tls_certificate(repo: RrdpDir, tmp_path: Path) -> None:
    from peers import https_get

    old = make_tls_ca(tmp_path / "old")
    new = make_tls_ca(tmp_path / "new")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(old.server_cert, cert)
    shutil.copyfile(old.server_key, key)
    with running(repo.root, tls_cert=cert, tls_key=key) as server:
        port = port_of(server)
        assert https_get(old, port, "/healthz")[0] == 200
        shutil.copyfile(new.server_cert, cert)  # certbot renews ...
        shutil.copyfile(new.server_key, key)
        server.loop.call_soon_threadsafe(server.reload)  # ... and sends SIGHUP
        deadline = time.monotonic() + 5
        while True:
            try:
                assert https_get(new, port, "/healthz")[0] == 200
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline, "the new certificate was not loaded"
                time.sleep(0.05)
        with pytest.raises(ssl.SSLError):
            https_get(old, port, "/healthz")


# --------------------------------------------------------------------------------------------
# hostile clients


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_slowloris_1000_slow_connections_while_a_normal_client_is_served(repo: RrdpDir) -> None:
    _raise_nofile(4096)
    with running(repo.root) as server:
        port = port_of(server)
        slow: list[socket.socket] = []
        try:
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /rrdp/notification.xml HTTP/1.1\r\nHo")
                slow.append(s)
            opened = time.monotonic()
            # a normal client (another loopback address) keeps getting answers meanwhile
            latencies = []
            while time.monotonic() - opened < 3.0:
                t0 = time.monotonic()
                conn = http.client.HTTPConnection(
                    "127.0.0.1", port, timeout=5, source_address=("127.0.0.2", 0)
                )
                conn.request("GET", "/rrdp/notification.xml")
                resp = conn.getresponse()
                assert resp.status == 200 and resp.read() == repo.notification
                conn.close()
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
            assert len(latencies) >= 10 and max(latencies) < 2.0, latencies
            # the header-read deadline (2 s from the first byte) has closed every slow one
            sel = selectors.DefaultSelector()
            for s in slow:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            closed: set[socket.socket] = set()
            deadline = time.monotonic() + 4.0
            while len(closed) < len(slow) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except (ConnectionResetError, BlockingIOError):
                        data = b""
                    if not data:
                        closed.add(sock)
                        sel.unregister(sock)
            sel.close()
            assert len(closed) == 1000
        finally:
            for s in slow:
                s.close()
        text = metrics_text(server)
        assert metric(text, "rpkirepo_serve_refusals_total", reason="serve-header-timeout") >= 1000


def test_connection_limits_total_and_per_address(repo: RrdpDir) -> None:
    limits = FAST.override({"serve_max_connections_per_address": 5, "serve_max_connections": 8})
    with running(repo.root, limits) as server:
        port = port_of(server)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        time.sleep(0.2)
        # the 6th from the same address is closed at once, unanswered
        assert raw(port, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n") == b""
        # another address is still served
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        more = [
            socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{i}", 0))
            for i in (4, 5, 6)
        ]
        time.sleep(0.2)
        assert raw(port, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", host="127.0.0.1") == b""
        for s in held + more:
            s.close()
        text = metrics_text(server)
        assert (
            metric(
                text,
                "rpkirepo_serve_refusals_total",
                reason="serve-too-many-connections-per-address",
            )
            >= 1
        )
        assert (
            metric(text, "rpkirepo_serve_refusals_total", reason="serve-too-many-connections") >= 1
        )


def test_oversized_headers_and_request_lines(repo: RrdpDir) -> None:
    with running(repo.root) as server:
        port = port_of(server)
        out = raw(port, b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 431 ")
        out = raw(port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 414 ")
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
        out = raw(port, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")
        assert out.startswith(b"HTTP/1.1 431 ")
        # a header that never ends: refused as soon as it passes the cap, not at a timeout
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: ")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(40):
                    s.sendall(b"a" * 1000)
            # 431, not the 2 s header deadline (which closes without an answer)
            assert s.recv(100).startswith(b"HTTP/1.1 431 ")
        text = metrics_text(server)
        assert metric(text, "rpkirepo_serve_refusals_total", reason="http-headers-too-large") == 3
        assert (
            metric(text, "rpkirepo_serve_refusals_total", reason="http-request-line-too-long") == 1
        )


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelining_flood_is_held_back_by_tcp(loop: str, repo: RrdpDir) -> None:
    with running(repo.root, loop=loop) as server:
        port = port_of(server)
        one = b"GET /rrdp/notification.xml HTTP/1.1\r\nHost: h\r\n\r\n"
        flood = one * 1_000_000  # ~48 MB of requests, ~600 MB of answers nobody reads
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.setblocking(False)
            sent = 0
            stalled_since = None
            t0 = time.monotonic()
            while sent < len(flood) and time.monotonic() - t0 < 10:
                try:
                    sent += s.send(flood[sent : sent + 65536])
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
            assert sent < len(flood), "the server kept reading requests nobody collects"
            # what the server holds for this connection is bounded: a few parsed requests and
            # at most one read's worth of bytes, however much the client pushed
            [conn] = [c for c in server.conns if c.host == "127.0.0.1"]
            assert conn.core.pending <= FAST.serve_max_pipelined
            assert len(conn.core._buf) <= 512 * 1024
            # the answers that did come are complete and in order
            s.setblocking(True)
            s.settimeout(5)
            got = b""
            while got.count(b"HTTP/1.1 200 OK") < 50:
                got += s.recv(65536)
            answers = got.split(b"HTTP/1.1 200 OK\r\n")[1:50]
            assert all(
                a.rstrip(b"\r\n").endswith(repo.notification.rstrip(b"\n"))
                or repo.notification in a
                for a in answers
            )
        # and another client is served meanwhile
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        other.request("GET", "/healthz")
        assert other.getresponse().status == 200
        other.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_flood_of_replayed_heads_is_held_back_by_tcp(loop: str, repo: RrdpDir) -> None:
    """The fast path (serve/_fast.py) answers a head it has seen with one write: a client that
    sends such heads one at a time and never reads must still be held back by TCP."""
    with running(repo.root, loop=loop) as server:
        port = port_of(server)
        one = b"GET /rrdp/notification.xml HTTP/1.1\r\nHost: h\r\n\r\n"
        assert raw(port, one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert raw(port, one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            sent = 0
            stalled_since = None
            t0 = time.monotonic()
            while sent < 1_000_000 and time.monotonic() - t0 < 10:
                try:
                    n = s.send(one)
                    if n < len(one):
                        break
                    sent += 1
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
            assert sent < 1_000_000, "the server kept answering requests nobody collects"
            [conn] = [c for c in server.conns if c.host == "127.0.0.1"]
            assert conn.paused  # the transport told us the client does not read
            assert conn.core.pending <= FAST.serve_max_pipelined
            assert len(conn.core._buf) <= 512 * 1024
            t = conn.transport
            assert t is not None and t.get_write_buffer_size() <= 4 * 1024 * 1024
        text = metrics_text(server)
        assert metric(text, "rpkirepo_serve_requests_total", kind="notification", status="200") > 2
        assert metric(text, "rpkirepo_serve_replayed_total") > 0  # the fast path answered


@pytest.mark.parametrize(
    "target",
    [
        b"/rrdp/../../../../etc/passwd",
        b"/rrdp/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/rrdp/%2E%2E%2f%2E%2E%2fetc/passwd",
        b"/rrdp/notification.xml%00.txt",
        b"/../notification.xml",
        b"/rrdp/..%5c..%5cetc/passwd",
        b"//etc/passwd",
        b"/etc/passwd",
        b"/rrdp/",
        b"/rrdp/notification.xml/..",
        b"http://h/rrdp/../../etc/passwd",
    ],
)
def test_path_traversal_is_404(repo: RrdpDir, target: bytes) -> None:
    with running(repo.root) as server:
        out = raw(
            port_of(server), b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 404 "), out[:200]
        assert b"root:" not in out


def test_raw_nul_in_the_target_is_400(repo: RrdpDir) -> None:
    with running(repo.root) as server:
        out = raw(port_of(server), b"GET /rrdp/notification.xml\x00 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    ("method", "status"),
    [
        (b"POST", 405),
        (b"PUT", 405),
        (b"DELETE", 405),
        (b"OPTIONS", 405),
        (b"TRACE", 405),
        (b"CONNECT", 405),
        (b"get", 405),
        (b"G\x01T", 400),
        (b"", 400),
    ],
)
def test_invalid_methods(repo: RrdpDir, method: bytes, status: int) -> None:
    with running(repo.root) as server:
        out = raw(port_of(server), method + b" /rrdp/notification.xml HTTP/1.1\r\nHost: h\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 %d " % status), out[:100]
        if status == 405:
            assert b"\r\nAllow: GET, HEAD\r\n" in out
        assert b"Connection: close" in out


def test_idle_keep_alive_connections_are_closed(repo: RrdpDir) -> None:
    with running(repo.root) as server:
        with socket.create_connection(("127.0.0.1", port_of(server)), timeout=6) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200 ")
            t0 = time.monotonic()
            assert s.recv(1000) == b""  # closed by the idle deadline
            assert 1.0 < time.monotonic() - t0 < 4.5
        assert (
            metric(
                metrics_text(server), "rpkirepo_serve_refusals_total", reason="serve-idle-timeout"
            )
            >= 1
        )


def test_rate_limit_per_address(repo: RrdpDir) -> None:
    limits = FAST.override({"serve_rate_per_address": 5})  # bursts of 20
    with running(repo.root, limits) as server:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=5)
        statuses = []
        for _ in range(30):
            conn.request("GET", "/rrdp/notification.xml")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        assert statuses[:20] == [200] * 20
        assert statuses.count(429) >= 9
        other = http.client.HTTPConnection(
            "127.0.0.1", port_of(server), timeout=5, source_address=("127.0.0.7", 0)
        )
        other.request("GET", "/healthz")
        assert other.getresponse().status == 200
        other.close()
        assert (
            metric(
                metrics_text(server), "rpkirepo_serve_refusals_total", reason="serve-rate-limited"
            )
            >= 9
        )


# --------------------------------------------------------------------------------------------
# revisions on a live server


def _wait_serial(port: int, serial: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        body = conn.getresponse().read()
        conn.close()
        if body == b"ok serial %d\n" % serial:
            return
        time.sleep(0.05)
    raise AssertionError(f"serial {serial} not served within {timeout} s")


@pytest.mark.parametrize("loop", LOOPS)
def test_revision_switch_while_a_client_downloads(loop: str, tmp_path: Path) -> None:
    repo = make_rrdp_dir(tmp_path / "rrdp", 1, snapshot_size=16_000_000, deltas=1)
    old_snapshot = repo.snapshot_url
    old_bytes = repo.files[old_snapshot]
    with running(repo.root, FAST.override({"serve_send_timeout": 20}), loop=loop) as server:
        port = port_of(server)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET " + old_snapshot.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            got = s.recv(65536)
            # a new serial appears (publish writes files, then the notification) ...
            new = make_rrdp_dir(repo.root, 2, snapshot_size=20_000, deltas=2)
            _wait_serial(port, 2)
            # ... and the publisher's GC removes the old snapshot from disk mid-download
            (repo.root / old_snapshot.removeprefix("/rrdp/")).unlink()
            head, _, body = (got + s.recv(65536)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                chunk = s.recv(1 << 20)
                assert chunk
                body += chunk
            assert body == old_bytes  # the download finished with the old revision's bytes
        # the new revision is complete, and the old snapshot has left the served set
        # (it left the disk), so it is 404 without the server looking at the disk again
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/rrdp/notification.xml")
        assert conn.getresponse().read() == new.notification
        for path, data in new.files.items():
            conn.request("GET", path)
            assert conn.getresponse().read() == data
        time.sleep(1.3)
        conn.request("GET", old_snapshot)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
        conn.close()


def test_graceful_stop_finishes_downloads_in_flight(tmp_path: Path) -> None:
    repo = make_rrdp_dir(tmp_path / "rrdp", 1, snapshot_size=8_000_000, deltas=1)
    data = repo.files[repo.snapshot_url]
    with running(repo.root, FAST.override({"serve_send_timeout": 20})) as server:
        port = port_of(server)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET " + repo.snapshot_url.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            got = s.recv(65536)
            loop = server.loop
            loop.call_soon_threadsafe(server.request_stop)  # SIGTERM's handler
            time.sleep(0.3)
            assert idle.recv(100) == b""  # idle connections are closed at once
            with pytest.raises(OSError):  # no new connections
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            while chunk := s.recv(1 << 20):  # the download in flight runs to its end
                got += chunk
            assert got.partition(b"\r\n\r\n")[2] == data
        idle.close()


def test_a_broken_new_notification_keeps_the_last_good_revision(repo: RrdpDir) -> None:
    with running(repo.root) as server:
        port = port_of(server)
        good = repo.notification
        (repo.root / "notification.xml").write_bytes(good.replace(b'serial="5"', b'serial="6"', 1))
        time.sleep(0.8)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/rrdp/notification.xml")
        assert conn.getresponse().read() == good
        conn.close()
        assert metric(metrics_text(server), "rpkirepo_serve_revision_failures_total") >= 1
        make_rrdp_dir(repo.root, 6)
        _wait_serial(port, 6)


def test_access_log_clf_and_json(repo: RrdpDir, tmp_path: Path) -> None:
    for fmt in ("clf", "json"):
        path = tmp_path / f"access-{fmt}.log"
        with running(repo.root, access_log=str(path), access_log_format=fmt) as server:
            conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=5)
            conn.request("GET", "/rrdp/notification.xml", headers={"User-Agent": "t/1"})
            conn.getresponse().read()
            conn.request("GET", "/nope")
            conn.getresponse().read()
            conn.close()
        lines = path.read_text().splitlines()
        assert len(lines) == 2
        if fmt == "clf":
            assert re.fullmatch(
                r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
                r'"GET /rrdp/notification\.xml HTTP/1\.1" 200 ' + str(len(repo.notification)),
                lines[0],
            ), lines[0]
            assert '"GET /nope HTTP/1.1" 404 ' in lines[1]
        else:
            doc = json.loads(lines[0])
            assert doc["remote"] == "127.0.0.1" and doc["status"] == "200"
            assert doc["target"] == "/rrdp/notification.xml" and doc["user_agent"] == "t/1"
            assert doc["kind"] == "notification" and doc["logger"] == "rpkirepo.serve.access"


# --------------------------------------------------------------------------------------------
# the command line in a child process


def _start_cli(args: list[str], stderr_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    err = stderr_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpkirepo", *args], stdout=subprocess.DEVNULL, stderr=err,
        start_new_session=True,
    )  # fmt: skip
    err.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ports = [
            int(p)
            for p in re.findall(r"serving \S+ on https?://[^ ]+:(\d+)/", stderr_path.read_text())
        ]
        if ports:
            return proc, ports
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not start:\n" + stderr_path.read_text())


def test_cli_config_table_workers_sighup_and_sigterm(repo: RrdpDir, tmp_path: Path) -> None:
    config = tmp_path / "rpkirepo.toml"
    config.write_text(
        f'[serve]\nrrdp_dir = "{repo.root}"\nlisten = ["127.0.0.1:0"]\nworkers = 2\n'
        f'grace = "60"\npoll_interval = 0.2\n\n[limits]\nserve_idle_timeout = 5\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nlisen = 1\n")
    proc = subprocess.run([sys.executable, "-m", "rpkirepo", "--config", str(bad), "serve"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1 and "config-unknown-key" in proc.stderr
    proc_, ports = _start_cli(["--config", str(config), "serve"], tmp_path / "serve.err")
    try:
        time.sleep(0.5)
        text = (tmp_path / "serve.err").read_text()
        assert len(set(re.findall(r"worker (\d) serving", text))) == 2, text
        assert len(set(ports)) == 1  # both workers on one port (SO_REUSEPORT)
        port = ports[0]
        for _ in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/rrdp/notification.xml")
            resp = conn.getresponse()
            assert resp.read() == repo.notification
            conn.close()
        proc_.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc_.poll() is None
        make_rrdp_dir(repo.root, 6)
        _wait_serial(port, 6)
        proc_.send_signal(signal.SIGTERM)
        assert proc_.wait(15) == 0
    finally:
        if proc_.poll() is None:
            os.killpg(proc_.pid, signal.SIGKILL)
            proc_.wait()
    text = (tmp_path / "serve.err").read_text()
    assert text.count("reloading (SIGHUP)") == 2, text


def test_cli_usage_errors(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rpkirepo", "serve", *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    assert run("--listen", "127.0.0.1:0").returncode == 2  # no --rrdp-dir
    assert run("--rrdp-dir", str(tmp_path), "--listen", "nonsense").returncode == 2
    assert (
        run("--rrdp-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--tls-cert", "x").returncode
        == 2
    )
    out = run("--help").stdout
    assert "examples:" in out and "--workers" in out
