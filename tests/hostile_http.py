"""A small scripted HTTP/1.1 server for tests: an upstream that misbehaves on purpose.

:class:`HostileServer` listens on 127.0.0.1 (a free port chosen by the kernel), optionally with
TLS, and answers each request from a script:

* ``server.files`` maps a path to bytes served as a well-behaved static file: 200 with an ETag
  and a Last-Modified (``server.validators`` picks which), and 304 when the request's
  If-None-Match or If-Modified-Since matches (``server.conditional = False`` turns them off);
* ``server.routes`` maps a path to a :class:`Reply` (or a function of the :class:`Request`
  returning one), which wins over ``files``: any status, headers and body; a gzip-encoded body;
  a body sent in pieces with a delay before each (slow drip); a Content-Length that lies; a
  connection reset (RST) or a silence that never ends after the body; or no answer at all;
* anything else is a 404.

Every request is recorded (method, path, headers with lower-case names) in ``server.requests``
so tests can check what a client asked for.  One connection serves one request:
the server closes it after the response (announced with ``Connection: close`` when
``announce_close`` is set).  Nothing leaves the loopback interface.

Helpers: :func:`closed_port` (connection refused), :func:`close_wait` (client sockets left open
after the server closed: a leak), :func:`tls_server_context`, :func:`gzip_stream` (bombs built
piece by piece).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "HostileServer",
    "Reply",
    "Request",
    "close_wait",
    "closed_port",
    "drip",
    "gzip_stream",
    "hang",
    "redirect",
    "serve",
    "tls_server_context",
]

LOOPBACK: Final = "127.0.0.1"
#: A fixed Last-Modified for static files (any valid HTTP date will do).
LAST_MODIFIED: Final = "Sun, 01 Mar 2026 12:00:00 GMT"
_HEAD_LIMIT: Final = 64 * 1024
_POLL: Final = 0.05


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer.

    ``body`` is bytes, or a function returning an iterable of chunks (sent as they come; the
    response is then close-delimited unless ``content_length`` is given).  ``gzip`` compresses
    a bytes body and adds ``Content-Encoding: gzip``.  ``content_length`` overrides the header
    (a lie, for bodies shorter than announced); ``omit_length`` leaves it out.  ``chunk`` splits
    a bytes body into pieces of that size with ``delay`` seconds before each piece.  ``reset``
    aborts the connection with a TCP RST after the body; ``stall`` keeps it open and silent after
    the body (until the server stops).  ``hang`` reads the request and never answers.
    """

    status: int = 200
    body: bytes | Callable[[], Iterable[bytes]] = b""
    headers: tuple[tuple[str, str], ...] = ()
    gzip: bool = False
    content_length: int | None = None
    omit_length: bool = False
    chunk: int | None = None
    delay: float = 0.0
    reset: bool = False
    stall: bool = False
    hang: bool = False


Route = Reply | Callable[[Request], Reply]


def serve(body: bytes, **kw: object) -> Reply:
    """A 200 with ``body`` (keywords as for :class:`Reply`)."""
    return Reply(body=body, **kw)  # type: ignore[arg-type]


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status=status, headers=(("Location", location),))


def hang() -> Reply:
    """Accept the connection, read the request, never answer."""
    return Reply(hang=True)


def drip(body: bytes, *, every: float, piece: int = 1, announce: int | None = None) -> Reply:
    """``body`` ``piece`` bytes at a time, ``every`` seconds apart, announcing ``announce``
    bytes (default: the body's length)."""
    return Reply(
        body=body,
        chunk=piece,
        delay=every,
        content_length=len(body) if announce is None else announce,
    )


def gzip_stream(pieces: Iterable[bytes], level: int = 9) -> bytes:
    """One gzip member holding the concatenation of ``pieces`` (for bombs built piece by piece
    without holding the expanded text)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [comp.compress(p) for p in pieces]
    out.append(comp.flush())
    return b"".join(out)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@dataclass
class HostileServer:
    """The server; use it as a context manager (``with HostileServer() as srv:``)."""

    tls: ssl.SSLContext | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    conditional: bool = True
    #: Which validators static files carry: "etag", "last-modified" (both by default).
    validators: tuple[str, ...] = ("etag", "last-modified")
    #: Send ``Connection: close`` (the connection is closed after every response either way).
    announce_close: bool = False
    requests: list[Request] = field(default_factory=list)
    #: Exceptions raised while serving (other than the client going away), for debugging.
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HostileServer:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, 0))
        s.listen(64)
        s.settimeout(_POLL)
        self._listener = s
        self.port = s.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="hostile-accept")
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def route(self, path: str, reply: Route) -> None:
        self.routes[path] = reply

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def idle(self, timeout: float = 5.0) -> None:
        """Wait until every connection accepted so far has been answered and closed."""
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._connection, args=(conn,), name="hostile-conn")
            with self._lock:
                self._threads.append(t)
            t.start()

    def _connection(self, raw: socket.socket) -> None:
        conn: socket.socket = raw
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            request = self._read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            self._answer(conn, request)
        except (OSError, ssl.SSLError):
            pass  # the client went away or refused our certificate: part of the game
        except Exception as exc:  # kept for the test to inspect
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _read_request(self, conn: socket.socket) -> Request | None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(4096)
            if not piece:
                return None
            data += piece
            if len(data) > _HEAD_LIMIT:
                return None
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Request(method, target, headers)

    def _script(self, request: Request) -> Reply:
        route = self.routes.get(request.path)
        if route is not None:
            return route(request) if callable(route) else route
        data = self.files.get(request.path)
        if data is None:
            return Reply(status=404, body=b"not found\n")
        tag = _etag(data)
        validators: tuple[tuple[str, str], ...] = ()
        if "etag" in self.validators:
            validators += (("ETag", tag),)
        if "last-modified" in self.validators:
            validators += (("Last-Modified", LAST_MODIFIED),)
        # RFC 9110 §13.2.2: If-None-Match wins; If-Modified-Since counts only without it.
        if self.conditional and (
            ("etag" in self.validators and request.headers.get("if-none-match") == tag)
            or (
                "last-modified" in self.validators
                and "if-none-match" not in request.headers
                and request.headers.get("if-modified-since") == LAST_MODIFIED
            )
        ):
            return Reply(status=304, headers=validators, omit_length=True)
        return Reply(body=data, headers=validators)

    def _answer(self, conn: socket.socket, request: Request) -> None:
        reply = self._script(request)
        if reply.hang:
            self._stop.wait()
            return
        pieces: Iterable[bytes]
        headers = list(reply.headers)
        length: int | None
        if isinstance(reply.body, bytes):
            body = reply.body
            if reply.gzip:
                body = gzip.compress(body, mtime=0)
                headers.append(("Content-Encoding", "gzip"))
            length = len(body)
            size = reply.chunk or max(1, len(body))
            pieces = [body[i : i + size] for i in range(0, len(body), size)]
        else:
            pieces = reply.body()
            length = None
        if reply.content_length is not None:
            length = reply.content_length
        if reply.omit_length:
            length = None
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Whatever"
        head = [f"HTTP/1.1 {reply.status} {phrase}"]
        head += [f"{k}: {v}" for k, v in headers]
        if length is not None:
            head.append(f"Content-Length: {length}")
        if self.announce_close:
            head.append("Connection: close")
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        for piece in _paced(pieces, reply.delay, self._stop):
            conn.sendall(piece)
        if reply.stall:
            self._stop.wait()
        if reply.reset:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _paced(pieces: Iterable[bytes], delay: float, stop: threading.Event) -> Iterator[bytes]:
    for piece in pieces:
        if delay > 0 and stop.wait(delay):
            return
        if stop.is_set():
            return
        yield piece


def closed_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def close_wait(port: int) -> int:
    """Loopback TCP sockets in CLOSE_WAIT towards ``port``: connections the peer (our server)
    closed but this host's client never did (a leaked client socket)."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "08" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def tls_server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx
