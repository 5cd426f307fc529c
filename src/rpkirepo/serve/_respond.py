"""From a :class:`~rpkirepo.serve._http.Request` and a :class:`~rpkirepo.serve._view.View` to
a :class:`Response`: pure functions, no I/O.

* ``/healthz``: 200 ``ok`` once a revision is loaded, 503 before (``Cache-Control: no-store``).
* Paths outside the view: 404, decided by one dictionary lookup.
* Content negotiation: the ``.gz`` representation when ``Accept-Encoding`` allows gzip (RFC 9110
  §12.5.3: ``gzip`` or ``*`` with a non-zero q-value), else the file itself; ``Vary:
  Accept-Encoding`` whenever a choice exists.
* Conditional requests (RFC 9110 §13): ``If-None-Match`` (weak comparison against the chosen
  representation's ETag, ``*`` matches) and, only without it, ``If-Modified-Since``: 304.
* ``Range`` on snapshots (RFC 9110 §14): one ``bytes=`` range gives 206 with ``Content-Range``;
  an unsatisfiable one 416; several ranges, or a failed ``If-Range``, the whole file (200).
* ``HEAD``: the same head as ``GET``, no body.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Final

from rpkirepo.errors import RpkiRepoError
from rpkirepo.serve._http import Request, status_of
from rpkirepo.serve._view import Body, Entry, FileHandle, View, http_date

__all__ = ["FileSlice", "Response", "date_line", "error_response", "respond"]

REASONS: Final = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

SERVER: Final = "rpkirepo"


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``count`` bytes of an open file from ``offset``: the adapter sends them without copying
    them through Python where it can (``sendfile``)."""

    file: FileHandle
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Response:
    """A response ready for the wire: ``head`` is the complete head; ``body`` is bytes, a file
    slice, or ``None`` (HEAD, 304).  ``kind`` labels metrics (file kind, ``healthz`` or
    ``other``); ``close``: close the connection after it."""

    status: int
    head: bytes
    body: bytes | FileSlice | None
    length: int
    kind: str
    close: bool


class _DateCache:
    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = b""

    def get(self, now: float) -> bytes:
        s = int(now)
        if s != self.second:
            self.second = s
            self.text = b"Date: " + http_date(s).encode("ascii") + b"\r\n"
        return self.text


_date = _DateCache()


def date_line(now: float) -> bytes:
    """The ``Date`` header line every response carries (cached per second)."""
    return _date.get(now)


def _head(
    status: int, now: float, extra: bytes, length: int | None, *, close: bool, http10_keep: bool
) -> bytes:
    conn = (
        b"Connection: close\r\n"
        if close
        else (b"Connection: keep-alive\r\n" if http10_keep else b"")
    )
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status].encode("ascii")),
            _date.get(now),
            b"Server: rpkirepo\r\n",
            extra,
            b"" if length is None else b"Content-Length: %d\r\n" % length,
            conn,
            b"\r\n",
        )
    )


def _simple(
    req: Request | None,
    status: int,
    text: str,
    now: float,
    *,
    kind: str = "other",
    close: bool = False,
    extra: bytes = b"",
) -> Response:
    body = text.encode("ascii")
    close = close or req is None or not req.keep_alive
    http10_keep = req is not None and req.version == "HTTP/1.0" and not close
    extra = b"Content-Type: text/plain\r\nCache-Control: no-store\r\n" + extra
    head = _head(status, now, extra, len(body), close=close, http10_keep=http10_keep)
    head_only = req is not None and req.head_only
    return Response(
        status, head, None if head_only else body, 0 if head_only else len(body), kind, close
    )


def error_response(exc: RpkiRepoError, now: float) -> Response:
    """The answer to a refused request (the connection closes after it)."""
    status = status_of(exc)
    extra = b"Allow: GET, HEAD\r\n" if status == 405 else b""
    return _simple(
        None,
        status,
        f"{REASONS.get(status, 'Error')}: {exc.reason.value}\n",
        now,
        close=True,
        extra=extra,
    )


def too_many_requests(req: Request, now: float, retry_after: int) -> Response:
    return _simple(req, 429, "Too Many Requests\n", now, extra=b"Retry-After: %d\r\n" % retry_after)


def _accepts_gzip(value: str | None) -> bool:
    if not value:
        return False
    star: bool | None = None
    for item in value.split(","):
        token, _, params = item.strip().partition(";")
        token = token.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if token in ("gzip", "x-gzip"):
            return q > 0
        if token == "*":  # noqa: S105 - a content-coding wildcard, not a secret
            star = q > 0
    return bool(star)


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def _parse_date(value: str) -> int | None:
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:
        return None
    try:
        return int(dt.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def _parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """One byte range as (first, last), ``None`` to ignore the header, ``False`` if it is
    unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return None
    first_s, last_s = first_s.strip(), last_s.strip()
    if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if len(first_s) > 19 or len(last_s) > 19:
        return None
    if not first_s:
        if not last_s:
            return None
        n = int(last_s)
        if n == 0 or size == 0:
            return False
        return (max(0, size - n), size - 1)
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid: ignored (RFC 9110 §14.1.1)
    if first >= size:
        return False
    return (first, min(last, size - 1))


def respond(req: Request, view: View, now: float) -> Response:
    """The response to ``req`` from ``view`` at time ``now`` (epoch seconds)."""
    path = req.path
    entry = view.entries.get(path) if path is not None else None
    if entry is None:
        if path == "/healthz":
            if view.ready:
                return _simple(req, 200, f"ok serial {view.serial}\n", now, kind="healthz")
            return _simple(req, 503, "no revision loaded\n", now, kind="healthz")
        return _simple(req, 404, "Not Found\n", now)
    return _respond_entry(req, entry, now)


def _respond_entry(req: Request, entry: Entry, now: float) -> Response:
    headers = req.headers
    use_gz = entry.gzip is not None and _accepts_gzip(headers.get("accept-encoding"))
    body: Body = entry.gzip if use_gz and entry.gzip is not None else entry.identity
    extra = entry.headers_gzip if use_gz else entry.headers_identity
    close = not req.keep_alive
    http10_keep = req.version == "HTTP/1.0" and not close
    kind = entry.kind.value

    inm = headers.get("if-none-match")
    if inm is not None:
        not_modified = _etag_matches(inm, body.etag)
    else:
        ims = headers.get("if-modified-since")
        since = _parse_date(ims) if ims is not None else None
        not_modified = since is not None and entry.last_modified <= since
    if not_modified:
        head = _head(304, now, extra, None, close=close, http10_keep=http10_keep)
        return Response(304, head, None, 0, kind, close)

    status = 200
    first, count = 0, body.size
    if entry.ranges and req.method == "GET" and "range" in headers:
        if_range = headers.get("if-range")
        honour = True
        if if_range is not None:
            if if_range.startswith('"') or if_range.startswith("W/"):
                honour = if_range.strip() == body.etag  # strong comparison (RFC 9110 §13.1.5)
            else:
                since = _parse_date(if_range)
                honour = since is not None and since == entry.last_modified
        if honour:
            rng = _parse_range(headers["range"], body.size)
            if rng is False:
                crange = b"Content-Range: bytes */%d\r\n" % body.size
                return _simple(req, 416, "Range Not Satisfiable\n", now, kind=kind, extra=crange)
            if isinstance(rng, tuple):
                status = 206
                first, count = rng[0], rng[1] - rng[0] + 1
                extra = extra + b"Content-Range: bytes %d-%d/%d\r\n" % (rng[0], rng[1], body.size)
    head = _head(status, now, extra, count, close=close, http10_keep=http10_keep)
    if req.head_only:
        return Response(status, head, None, 0, kind, close)
    out: bytes | FileSlice
    if body.data is not None:
        out = body.data if (first == 0 and count == body.size) else body.data[first : first + count]
    else:
        assert body.file is not None
        out = FileSlice(body.file, first, count)
    return Response(status, head, out, count, kind, close)
