"""Streaming HTTP(S) GET from servers we do not control: the one place rpkirepo fetches over HTTP.

What it guarantees, whatever the server does:

* the body is streamed in chunks and never held whole; decoded bytes (after gzip) are capped by
  the caller's ``max_size``, so a gzip bomb stops at the cap (rrdp-checklist (c)3-4);
* every read waits at most ``Limits.http_read_timeout`` seconds, and the whole download at most
  ``Limits.http_file_deadline`` seconds, so a server dripping one byte at a time cannot hold a
  run forever ((c)7);
* redirects are followed only to the same origin (scheme, host and port; RFC 9674 for RRDP) and
  at most ``Limits.http_max_redirects`` times; anything else is refused with a reason;
* conditional requests: the caller hands in the ETag / Last-Modified it stored, and a 304 comes
  back as a response without a body;
* ``Accept-Encoding: gzip``: a gzip body is decoded while streaming; any other content coding is
  refused.

Every failure is an :class:`~rpkirepo.errors.RpkiRepoError` with a stable reason code
(``http-*``); no socket, ssl, http.client or zlib exception escapes.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from isal import isal_zlib

from rpkirepo import __version__
from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS, Limits

#: What a damaged gzip stream raises (python-isal's error is not zlib's).
_INFLATE_ERRORS: Final = (zlib.error, cast("type[Exception]", isal_zlib.error))

__all__ = ["HttpOptions", "HttpResponse", "Validators", "http_get", "read_all", "same_origin"]

CHUNK: Final = 256 * 1024
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Validators:
    """Cache validators of a previous response (RFC 9110 §8.8), persisted between runs."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """TLS trust and identification for every request of a run."""

    ca_file: Path | None = None
    insecure: bool = False
    user_agent: str = f"rpkirepo/{__version__}"
    limits: Limits = DEFAULT_LIMITS

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme.lower(), _host_port(pa)) == (pb.scheme.lower(), _host_port(pb))


def _host_port(parts: urllib.parse.SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return (parts.hostname or "").lower(), port


class HttpResponse:
    """A 200 (with a body to stream) or a 304 (without one).  Close it, or use ``with``."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        url: str,
        max_size: int,
        deadline: float,
        read_timeout: float,
        deadline_limit: str = "http_file_deadline",
    ) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        #: The name of the limit ``deadline`` comes from (for the error's context).
        self._deadline_limit = deadline_limit
        self._resp = resp
        self.url = url
        self.status = resp.status
        self.validators = Validators(resp.getheader("ETag"), resp.getheader("Last-Modified"))
        self.content_encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        self._max_size = max_size
        self._deadline = deadline
        #: Called with every body chunk as received (before gzip decoding): lets a mirror keep
        #: the compressed form it was sent.
        self.raw_sink: Callable[[bytes], None] | None = None
        #: Bytes received on the wire (before gzip decoding) and after decoding.
        self.wire_bytes = 0
        self.size = 0

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        # The response owns the socket when the server said "Connection: close".
        self._resp.close()
        self._conn.close()

    def _read(self) -> bytes:
        remaining = self._deadline - time.monotonic()
        too_long = RemoteProtocolError(
            Reason.HTTP_TIMEOUT, "download took too long", url=self.url, limit=self._deadline_limit
        )
        if remaining <= 0:
            raise too_long
        sock = self._conn.sock
        if sock is not None:
            # A silent server is bounded by the read timeout and by the deadline, whichever
            # comes first (the caller's deadline may be a whole run's).
            sock.settimeout(min(self._read_timeout, remaining))
        try:
            data = self._resp.read1(CHUNK)
        except TimeoutError as exc:
            if remaining < self._read_timeout:
                raise too_long from exc
            raise RemoteProtocolError(
                Reason.HTTP_TIMEOUT, "server went silent", url=self.url, limit="http_read_timeout"
            ) from exc
        except http.client.IncompleteRead as exc:
            raise RemoteProtocolError(
                Reason.HTTP_MALFORMED, "body shorter than announced", url=self.url
            ) from exc
        except ssl.SSLError as exc:
            raise RemoteProtocolError(Reason.HTTP_TLS, str(exc), url=self.url) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise RemoteProtocolError(Reason.HTTP_MALFORMED, str(exc), url=self.url) from exc
        if not data and self._resp.length:
            # read1() returns b"" at an early end of stream instead of raising IncompleteRead.
            raise RemoteProtocolError(
                Reason.HTTP_MALFORMED,
                "body shorter than announced",
                url=self.url,
                missing=self._resp.length,
            )
        self.wire_bytes += len(data)
        if self.raw_sink is not None and data:
            self.raw_sink(data)
        return data

    def _check(self, n: int) -> None:
        self.size += n
        if self.size > self._max_size:
            raise LimitExceeded(
                Reason.FILE_TOO_LARGE,
                "body larger than allowed",
                url=self.url,
                size=self.size,
                max=self._max_size,
            )

    def chunks(self) -> Iterator[bytes]:
        """The decoded body, chunk by chunk, with the size cap and deadline applied."""
        if self.not_modified:
            return
        if self.content_encoding in ("identity", ""):
            while data := self._read():
                self._check(len(data))
                yield data
            return
        if self.content_encoding not in ("gzip", "x-gzip"):
            raise RemoteProtocolError(
                Reason.HTTP_CONTENT_ENCODING,
                "unsupported content coding",
                url=self.url,
                encoding=self.content_encoding,
            )
        # RFC 1952 allows several members back to back; anything after the last complete member
        # must itself be a member, so trailing junk is an error ((c)5), as is a cut stream.
        # ISA-L's inflate (python-isal, already used for our own .gz) is ~1.8x zlib's here.
        z = isal_zlib.decompressobj(wbits=31)
        fed, members = False, 0
        try:
            data = self._read()
            while data:
                fed = True
                # Never let one small compressed chunk expand past the cap in one call.
                out = z.decompress(data, CHUNK)
                self._check(len(out))
                if out:
                    yield out
                if z.eof:
                    members += 1
                    data = z.unused_data
                    z, fed = isal_zlib.decompressobj(wbits=31), False
                    if not data:
                        data = self._read()
                    continue
                data = z.unconsumed_tail or self._read()
            if fed and not z.eof:
                out = z.flush()  # whatever zlib still holds for input it has consumed
                self._check(len(out))
                if out:
                    yield out
                if z.eof and not z.unused_data:
                    fed, members = False, members + 1
            if fed or members == 0:
                raise RemoteProtocolError(
                    Reason.HTTP_CONTENT_ENCODING, "gzip stream truncated", url=self.url
                )
        except _INFLATE_ERRORS as exc:
            raise RemoteProtocolError(
                Reason.HTTP_CONTENT_ENCODING, f"bad gzip stream: {exc}", url=self.url
            ) from exc


def _connect(
    url: str, options: HttpOptions, deadline: float
) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RemoteProtocolError(Reason.HTTP_TIMEOUT, "no time left", url=url, limit="deadline")
    timeout = min(options.limits.http_read_timeout, remaining)
    try:
        port = parts.port
    except ValueError as exc:
        raise RemoteProtocolError(Reason.URI_SYNTAX, "bad port", url=url) from exc
    if not parts.hostname:
        raise RemoteProtocolError(Reason.URI_SYNTAX, "no host", url=url)
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=options.ssl_context()
        )
    elif scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    else:
        raise RemoteProtocolError(Reason.URI_SCHEME, "only http and https are fetched", url=url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return conn, target


def http_get(
    url: str,
    *,
    options: HttpOptions,
    max_size: int,
    validators: Validators | None = None,
    accept_gzip: bool = True,
    deadline: float | None = None,
) -> HttpResponse:
    """GET ``url``; returns a 200 or 304 response, or raises with a reason code.

    Every wait (connect, headers, each read) is bounded by ``http_read_timeout`` and the whole
    transfer by ``http_file_deadline``, or by ``deadline`` (a :func:`time.monotonic` value, e.g.
    a run's) when that comes first."""
    limits = options.limits
    own = time.monotonic() + limits.http_file_deadline
    deadline_limit = "http_file_deadline" if deadline is None or own <= deadline else "deadline"
    deadline = own if deadline is None else min(own, deadline)
    origin = url
    for _hop in range(limits.http_max_redirects + 1):
        conn, target = _connect(url, options, deadline)
        headers = {"User-Agent": options.user_agent, "Accept": "*/*"}
        headers["Accept-Encoding"] = "gzip" if accept_gzip else "identity"
        if validators is not None:
            if validators.etag:
                headers["If-None-Match"] = validators.etag
            if validators.last_modified:
                headers["If-Modified-Since"] = validators.last_modified
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except ssl.SSLError as exc:
            conn.close()
            raise RemoteProtocolError(Reason.HTTP_TLS, str(exc), url=url) from exc
        except TimeoutError as exc:
            conn.close()
            raise RemoteProtocolError(
                Reason.HTTP_TIMEOUT, "no answer", url=url, limit="http_read_timeout"
            ) from exc
        except (ConnectionError, socket.gaierror, OSError) as exc:
            conn.close()
            raise RemoteProtocolError(
                Reason.HTTP_CONNECT, str(getattr(exc, "strerror", None) or exc), url=url
            ) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise RemoteProtocolError(Reason.HTTP_MALFORMED, str(exc), url=url) from exc
        if resp.status in _REDIRECTS:
            location = resp.getheader("Location")
            resp.close()
            conn.close()
            if not location:
                raise RemoteProtocolError(
                    Reason.HTTP_MALFORMED, "redirect without Location", url=url
                )
            nxt = urllib.parse.urljoin(url, location)
            if not same_origin(origin, nxt):
                raise RemoteProtocolError(
                    Reason.HTTP_REDIRECT, "redirect to another origin refused", url=url, to=nxt
                )
            url = nxt
            continue
        if resp.status == 200 or (resp.status == 304 and validators is not None):
            return HttpResponse(
                conn, resp, url, max_size, deadline, limits.http_read_timeout, deadline_limit
            )
        resp.close()
        conn.close()
        raise RemoteProtocolError(
            Reason.HTTP_STATUS, f"HTTP {resp.status}", url=url, status=resp.status
        )
    raise RemoteProtocolError(
        Reason.HTTP_TOO_MANY_REDIRECTS, "too many redirects", url=origin, limit="http_max_redirects"
    )


def read_all(response: HttpResponse) -> bytes:
    """The whole (capped) body: for small files such as a notification."""
    return b"".join(response.chunks())
