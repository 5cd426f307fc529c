"""HTTP/1.1 request parsing for `rpkirepo serve`: bytes in, :class:`Request` values out, no I/O.

Theory of operation
===================

:class:`HttpConnection` holds the server side of one connection's *input*.  The adapter hands it
bytes with :meth:`~HttpConnection.feed`, in chunks of any size down to one byte, and pulls
requests with :meth:`~HttpConnection.next_event` until it returns :data:`NEED_DATA`.  Responses
are built elsewhere (:mod:`rpkirepo.serve._respond`) and framed by :func:`render_head`; the
connection only remembers whether the client may send another request (keep-alive).

Only what an RRDP server needs is accepted (RFC 9112, strictly):

* the request line ``METHOD SP request-target SP HTTP-version CRLF`` with single spaces;
  ``GET`` and ``HEAD`` are served, any other well-formed method is 405, a malformed one 400;
  HTTP/1.0 and HTTP/1.1 only (else 505); origin-form or absolute-form targets (``*`` is 400);
* header fields ``name ":" OWS value OWS CRLF``: token names, no whitespace before the colon,
  no obsolete line folding, no control characters in values (all 400); HTTP/1.1 needs exactly
  one ``Host``;
* no request body: ``Transfer-Encoding`` or a non-zero ``Content-Length`` is refused (400) and the
  connection closed, so nothing can be smuggled behind a body we never read;
* lines end with CRLF; up to 8 empty lines before a request line are skipped (RFC 9112 §2.2).

Hard limits, all from :class:`~rpkirepo.limits.Limits`, checked on the bytes buffered so far so
that a client dripping one byte at a time hits them as soon as one who sends everything at once:
``serve_max_request_line`` (414), ``serve_max_header_bytes`` and ``serve_max_header_count`` (431).
Pipelined requests are parsed eagerly while at most ``serve_max_pipelined`` wait for their
responses; past that :attr:`~HttpConnection.wants_input` turns false and the adapter stops
reading (TCP back-pressure), so a pipelining flood costs a bounded buffer.

Every refusal raises :class:`~rpkirepo.errors.RemoteProtocolError` or
:class:`~rpkirepo.errors.LimitExceeded` with a reason code and ``status`` in its context; nothing
else escapes.  After one the connection is dead: the adapter sends :func:`status_of`'s response
and closes.

Paths
-----

:func:`normalise_path` turns a request target into the key of the served set: the query is
dropped, ``%XX`` escapes are decoded once (a bad escape is 400), and anything with an empty,
``.`` or ``..`` segment, a backslash, NUL or another control character, or non-ASCII is refused:
it cannot be a path of the served set, so it is answered 404 by the caller without a lookup,
let alone a filesystem access (Krill's CVE-2023-0158 came from crafted paths).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Final

from rpkirepo.errors import LimitExceeded, LocalProtocolError, Reason, RemoteProtocolError
from rpkirepo.errors import RpkiRepoError as _Root
from rpkirepo.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "NEED_DATA",
    "HttpConnection",
    "NeedData",
    "Request",
    "normalise_path",
    "status_of",
]


class NeedData:
    """Sentinel type: no complete request is buffered."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_BAD: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION: Final = re.compile(rb"HTTP/([0-9])\.([0-9])")
_REQUEST_LINE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++) ([^\x00-\x20\x7f]++) HTTP/([0-9])\.([0-9])"
)
_HEADER_LINE: Final = re.compile(
    # possessive quantifiers: linear time whatever the line (no backtracking to exploit)
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*+)\r\n"
)
_PLAIN_PATH: Final = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9_.~-]*+)++")
_SERVED_METHODS: Final = frozenset({"GET", "HEAD"})
_MAX_EMPTY_LINES: Final = 8


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head (RFC 9112 §3).

    ``headers`` maps lower-case field names to values; a field sent more than once is joined
    with ``", "`` (RFC 9110 §5.3).  ``path`` is :func:`normalise_path` of the target, or ``None``
    when the target cannot name a served file.  ``keep_alive``: whether the client may send
    another request on this connection after the response (RFC 9112 §9.3).
    """

    method: str
    target: str
    version: str
    headers: dict[str, str]
    path: str | None
    keep_alive: bool

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"


def _bad(reason: Reason, detail: str, status: int = 400) -> RemoteProtocolError:
    return RemoteProtocolError(reason, detail, status=status)


def status_of(exc: _Root) -> int:
    """The HTTP status to answer a refusal with (400 when the error carries none)."""
    status = exc.context.get("status")
    return status if isinstance(status, int) else 400


_HEX: Final = frozenset("0123456789abcdefABCDEF")


def normalise_path(target: str) -> str | None:
    """The served-set key for a request target, or ``None`` if it cannot be one.

    Raises :class:`RemoteProtocolError` (400) for a malformed percent escape.
    """
    if _PLAIN_PATH.fullmatch(target):
        return target  # the common case: nothing to decode, no dot or empty segment
    if target.startswith("/"):
        path = target
    else:
        low = target[:8].lower()
        if low.startswith("http://") or low.startswith("https://"):
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            path = "/" if slash < 0 else rest[slash:]
        else:
            raise _bad(
                Reason.HTTP_BAD_TARGET, "request target is neither origin- nor absolute-form"
            )
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        out: list[str] = []
        i = 0
        n = len(path)
        while i < n:
            c = path[i]
            if c == "%":
                h = path[i + 1 : i + 3]
                if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                    raise _bad(Reason.HTTP_BAD_TARGET, "bad percent escape")
                out.append(chr(int(h, 16)))
                i += 3
            else:
                out.append(c)
                i += 1
        path = "".join(out)
    if not path.isascii() or not path.isprintable() or "\\" in path:
        return None
    segments = path.split("/")[1:]
    for seg in segments[:-1]:
        if seg in ("", ".", ".."):
            return None
    if segments and segments[-1] in (".", ".."):
        return None
    return path


def _refuse_request_line(line: bytes) -> None:
    """Raise the precise refusal for a request line the fast pattern did not accept."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _bad(Reason.HTTP_BAD_REQUEST, "request line is not METHOD SP TARGET SP VERSION")
    method_b, _target, version_b = parts
    if not _TOKEN.fullmatch(method_b):
        raise _bad(Reason.HTTP_BAD_REQUEST, "method is not a token")
    m = _VERSION.fullmatch(version_b)
    if m is None:
        raise _bad(Reason.HTTP_BAD_REQUEST, "malformed HTTP version")
    if m.group(1) != b"1":
        raise _bad(Reason.HTTP_VERSION, "only HTTP/1.x is served", status=505)
    raise _bad(Reason.HTTP_BAD_TARGET, "empty or control characters in the target")


class HttpConnection:
    """The input side of one server connection (see the module documentation)."""

    __slots__ = (
        "_buf",
        "_closed",
        "_dead",
        "_limits",
        "_queue",
        "_scan_from",
        "keep_alive",
        "requests_seen",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._queue: deque[Request] = deque()
        self._dead = False
        self._closed = False
        self._scan_from = 0
        self.keep_alive = True
        """False once a request asked to close, or after an error: read no further request."""
        self.requests_seen = 0

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Buffer ``data`` and parse every complete request head in it (up to the pipeline cap).

        Raises on a protocol violation or a limit; the connection is dead afterwards.
        """
        if self._dead:
            raise LocalProtocolError(Reason.USAGE, "feed() after a protocol error")
        if self._closed:
            raise LocalProtocolError(Reason.USAGE, "feed() after feed_eof()")
        if not self.keep_alive:
            return  # after Connection: close, further bytes are ignored (RFC 9112 §9.6)
        self._buf += data
        self._parse()

    def feed_eof(self) -> None:
        self._closed = True

    @property
    def wants_input(self) -> bool:
        """Whether the adapter should keep reading (false while the pipeline is full)."""
        return (
            not self._dead
            and self.keep_alive
            and len(self._queue) < self._limits.serve_max_pipelined
        )

    @property
    def in_request(self) -> bool:
        """Whether part of a request head is buffered (the header-read timeout is running)."""
        buf = self._buf
        return bool(buf) and (buf[0] not in b"\r\n" or bool(buf.strip(b"\r\n")))

    @property
    def at_rest(self) -> bool:
        """Nothing buffered or queued, and another request may come: the next request's answer
        depends on its bytes alone (the adapter's fast path, :mod:`._fast`, relies on this)."""
        return (
            not self._buf
            and not self._queue
            and self.keep_alive
            and not self._dead
            and not self._closed
        )

    @property
    def pending(self) -> int:
        return len(self._queue)

    def next_event(self) -> Request | NeedData:
        """The next parsed request, or :data:`NEED_DATA`."""
        if self._queue:
            req = self._queue.popleft()
            if self._buf and len(self._queue) < self._limits.serve_max_pipelined:
                self._parse()
            return req
        if self._dead:
            raise LocalProtocolError(Reason.USAGE, "next_event() after a protocol error")
        return NEED_DATA

    # -- parsing -------------------------------------------------------------------------

    def _parse(self) -> None:
        limits = self._limits
        while self.keep_alive and len(self._queue) < limits.serve_max_pipelined and self._buf:
            try:
                req = self._parse_one()
            except _Root:
                self._dead = True
                self.keep_alive = False
                raise
            if req is None:
                return
            self._queue.append(req)
            self.requests_seen += 1
            if not req.keep_alive:
                self.keep_alive = False
                self._buf.clear()

    def _parse_one(self) -> Request | None:
        buf = self._buf
        limits = self._limits
        # Skip a few empty lines before a request line (RFC 9112 §2.2).
        skipped = 0
        while buf[:2] == b"\r\n":
            del buf[:2]
            skipped += 1
            if skipped > _MAX_EMPTY_LINES:
                raise _bad(Reason.HTTP_BAD_REQUEST, "too many empty lines before a request")
        if buf == b"\r":
            return None
        end = buf.find(b"\r\n\r\n", max(0, self._scan_from - 3))
        if end < 0:
            self._scan_from = len(buf)
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > limits.serve_max_request_line:
                    raise LimitExceeded(
                        Reason.HTTP_REQUEST_LINE_TOO_LONG,
                        "request line too long",
                        limit="serve_max_request_line",
                        status=414,
                    )
                self._check_line_chars(bytes(buf))
            else:
                self._check_request_line_length(line_end)
                if len(buf) - line_end - 2 > limits.serve_max_header_bytes:
                    raise LimitExceeded(
                        Reason.HTTP_HEADERS_TOO_LARGE,
                        "request header fields too large",
                        limit="serve_max_header_bytes",
                        status=431,
                    )
                if buf.count(b"\r\n", line_end + 2) > limits.serve_max_header_count:
                    raise LimitExceeded(
                        Reason.HTTP_HEADERS_TOO_LARGE,
                        "too many request header fields",
                        limit="serve_max_header_count",
                        status=431,
                    )
            return None
        self._scan_from = 0
        head = bytes(buf[:end])
        del buf[: end + 4]
        return self._parse_head(head)

    def _check_request_line_length(self, line_end: int) -> None:
        if line_end > self._limits.serve_max_request_line:
            raise LimitExceeded(
                Reason.HTTP_REQUEST_LINE_TOO_LONG,
                "request line too long",
                limit="serve_max_request_line",
                status=414,
            )

    @staticmethod
    def _check_line_chars(partial: bytes) -> None:
        # A bare CR or LF, or NUL, can never become valid: refuse before waiting for more.
        if b"\n" in partial or b"\x00" in partial:
            raise _bad(Reason.HTTP_BAD_REQUEST, "bare LF or NUL in the request line")
        cr = partial.find(b"\r")
        if 0 <= cr < len(partial) - 1:
            raise _bad(Reason.HTTP_BAD_REQUEST, "bare CR in the request line")

    def _parse_head(self, head: bytes) -> Request:
        limits = self._limits
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        self._check_request_line_length(len(line))
        if line_end >= 0:
            if head.count(b"\r\n") > limits.serve_max_header_count:
                raise LimitExceeded(
                    Reason.HTTP_HEADERS_TOO_LARGE,
                    "too many request header fields",
                    limit="serve_max_header_count",
                    status=431,
                )
            if len(head) - len(line) > limits.serve_max_header_bytes:
                raise LimitExceeded(
                    Reason.HTTP_HEADERS_TOO_LARGE,
                    "request header fields too large",
                    limit="serve_max_header_bytes",
                    status=431,
                )
        m = _REQUEST_LINE.fullmatch(line)
        if m is None or m.group(3) != b"1":
            _refuse_request_line(line)  # raises, with the precise reason
            raise AssertionError("unreachable")  # pragma: no cover
        try:
            target = m.group(2).decode("ascii")
        except UnicodeDecodeError:
            raise _bad(Reason.HTTP_BAD_TARGET, "non-ASCII request target") from None
        method = m.group(1).decode("ascii")
        http11 = m.group(4) != b"0"
        headers: dict[str, str] = {}
        seen_host = 0
        if len(head) > len(line):
            # one regex pass over the whole block: each match must start where the last ended
            text = head[len(line) + 2 :].decode("latin-1") + "\r\n"
            pos = 0
            for hm in _HEADER_LINE.finditer(text):
                if hm.start() != pos:
                    break
                pos = hm.end()
                name = hm.group(1).lower()
                value = hm.group(2).rstrip(" \t")
                if name == "host":
                    seen_host += 1
                if name in headers:
                    if name in ("host", "content-length"):
                        raise _bad(Reason.HTTP_BAD_HEADER, f"{name} sent twice")
                    headers[name] = headers[name] + ", " + value
                else:
                    headers[name] = value
            if pos != len(text):
                # a name that is not a token, whitespace before the colon, obs-fold, a control
                # character in a value, or a bare CR
                raise _bad(Reason.HTTP_BAD_HEADER, "malformed header field line")
        if http11 and seen_host != 1:
            raise _bad(Reason.HTTP_BAD_HEADER, "HTTP/1.1 request without a Host field")
        if "transfer-encoding" in headers:
            raise _bad(Reason.HTTP_REQUEST_BODY, "request bodies are not accepted")
        cl = headers.get("content-length")
        if cl is not None and (not cl.isdigit() or int(cl) != 0):
            raise _bad(Reason.HTTP_REQUEST_BODY, "request bodies are not accepted")
        if method not in _SERVED_METHODS:
            raise _bad(Reason.HTTP_METHOD_NOT_ALLOWED, f"method {method} not allowed", status=405)
        if target == "*":
            raise _bad(Reason.HTTP_BAD_TARGET, "asterisk-form is only for OPTIONS")
        path = normalise_path(target)
        conn = headers.get("connection", "").lower()
        tokens = {t.strip() for t in conn.split(",")} if conn else set()
        keep_alive = "close" not in tokens if http11 else "keep-alive" in tokens
        return Request(
            method=method,
            target=target,
            version="HTTP/1.1" if http11 else "HTTP/1.0",
            headers=headers,
            path=path,
            keep_alive=keep_alive,
        )
