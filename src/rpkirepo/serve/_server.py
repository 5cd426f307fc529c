"""The asyncio adapter of `rpkirepo serve`: sockets, TLS, timers, metrics and the access log.

Everything protocol-shaped lives in the sans-I/O modules (:mod:`._http` parses,
:mod:`._respond` decides, :mod:`._revision` loads); this module only moves bytes and time:

* one :class:`_Conn` (an ``asyncio.Protocol``) per connection feeds received bytes to its
  :class:`~rpkirepo.serve._http.HttpConnection` and writes each response.  In front of that,
  the fast path (:mod:`._fast`): a chunk that is one whole request head, arriving on a
  connection at rest, is looked up in the server's :class:`~._fast.ResponseCache`; a hit is
  answered with one ``write`` of the stored answer (its ``Date`` renewed each second), after the
  rate limit and followed by the access log, exactly as the reference path would; a miss takes
  the reference path, whose answer is stored when it can be replayed.  In-memory bodies are
  written with the head in one ``write``; file bodies go through ``loop.sendfile`` (plain TCP,
  ``sendfile(2)``: the bytes never enter Python) or, under TLS, ``pread`` in 256 KiB chunks
  paced by the transport's flow control, so memory stays flat for any snapshot size;
* pipelining: requests are answered in order, one at a time; while a response is being sent, or
  the transport's write buffer is full (the client does not read), nothing else is processed, and
  when :attr:`HttpConnection.wants_input` turns false reading is paused, so a flood of pipelined
  requests is held back by TCP, not by our memory;
* limits (from :class:`~rpkirepo.limits.Limits`): connections in total and per client address
  (refused at once, before a byte is read), a header-read deadline from a request's first byte
  (and from accept for the first request: slowloris), an idle deadline between keep-alive
  requests, a send deadline while a response makes no progress, and an optional request rate per
  address (token bucket, 429).  One sweep a second enforces the deadlines, polls the RRDP
  directory for a new notification and flushes the access log; each refusal is counted by reason;
* ``SIGTERM``/``SIGINT``: stop listening, close idle connections, let responses in flight finish
  (at most ``serve_send_timeout`` seconds), exit 0.  ``SIGHUP``: reload the TLS certificate and
  key, re-read the notification, reopen the access log (after logrotate);
* ``workers > 1``: the parent forks that many processes which each listen on the same ports with
  ``SO_REUSEPORT`` (the kernel spreads connections), forwards signals to them and restarts one
  that dies.  Each worker serves metrics on ``metrics port + worker index``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

from rpkirepo.errors import ConfigError, Reason, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.log import JsonFormatter
from rpkirepo.metrics import Metric, render
from rpkirepo.serve._fast import MAX_HEAD, Cached, ResponseCache
from rpkirepo.serve._http import NEED_DATA, HttpConnection, Request
from rpkirepo.serve._respond import (
    FileSlice,
    Response,
    error_response,
    respond,
    too_many_requests,
)
from rpkirepo.serve._revision import RevisionWatcher

__all__ = ["ServeOptions", "Server", "run_server"]

log = logging.getLogger("rpkirepo.serve")

TLS_CHUNK: Final = 256 * 1024
SENDFILE_CHUNK: Final = 8 * 1024 * 1024
SWEEP_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Everything `rpkirepo serve` needs (command.py builds it from flags and ``[serve]``)."""

    rrdp_dir: Path
    listen: tuple[tuple[str, int], ...]
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 1
    metrics_listen: tuple[str, int] | None = None
    grace: float = 7200.0
    access_log: str | None = None  # a path, "-" for stdout, None for none
    access_log_format: str = "clf"  # clf | json
    poll_interval: float = 1.0
    event_loop: str = "auto"  # auto | asyncio | uvloop
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError(Reason.USAGE, "serve needs at least one --listen address")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(Reason.USAGE, "--tls-cert and --tls-key go together")
        if self.workers < 1:
            raise ConfigError(Reason.USAGE, "--workers must be at least 1")
        if self.access_log_format not in ("clf", "json"):
            raise ConfigError(Reason.USAGE, "--access-log-format is clf or json")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(Reason.USAGE, "--event-loop is auto, asyncio or uvloop")
        if self.grace < 0 or self.poll_interval <= 0:
            raise ConfigError(Reason.USAGE, "--grace must be >= 0 and the poll interval > 0")


# --------------------------------------------------------------------------------------------
# counters


class Stats:
    """Counters of one worker, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.bytes: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.connections_total = 0
        self.connections_open = 0
        self.replayed = 0

    def refuse(self, reason: Reason | str) -> None:
        self.refusals[str(reason)] += 1

    def add(self, kind: str, status: int, requests: int, sent: int) -> None:
        """Count ``requests`` answers replayed by the fast path (folded in batches)."""
        self.replayed += requests
        self.requests[(kind, status)] += requests
        if sent:
            self.bytes[kind] += sent

    def metrics(self, watcher: RevisionWatcher, worker: int) -> list[Metric]:
        w = {"worker": str(worker)}
        out: list[Metric] = []
        for (kind, status), n in sorted(self.requests.items()):
            out.append(
                (
                    "rpkirepo_serve_requests_total",
                    "counter",
                    "Requests answered, by file kind and status",
                    n,
                    {**w, "kind": kind, "status": str(status)},
                )
            )
        for kind, n in sorted(self.bytes.items()):
            out.append(
                (
                    "rpkirepo_serve_response_bytes_total",
                    "counter",
                    "Body bytes sent, by file kind",
                    n,
                    {**w, "kind": kind},
                )
            )
        answered = sum(n for (k, s), n in self.requests.items() if s in (200, 206, 304))
        not_modified = sum(n for (k, s), n in self.requests.items() if s == 304)
        out.append(
            (
                "rpkirepo_serve_not_modified_ratio",
                "gauge",
                "Share of successful answers that were 304 Not Modified",
                not_modified / answered if answered else 0.0,
                w,
            )
        )
        for reason, n in sorted(self.refusals.items()):
            out.append(
                (
                    "rpkirepo_serve_refusals_total",
                    "counter",
                    "Requests and connections refused or cut, by reason",
                    n,
                    {**w, "reason": reason},
                )
            )
        out += [
            (
                "rpkirepo_serve_replayed_total",
                "counter",
                "Requests answered with a stored answer to the same request head (fast path)",
                self.replayed,
                w,
            ),
            (
                "rpkirepo_serve_connections_total",
                "counter",
                "Connections accepted",
                self.connections_total,
                w,
            ),
            (
                "rpkirepo_serve_connections_open",
                "gauge",
                "Connections open now",
                self.connections_open,
                w,
            ),
            (
                "rpkirepo_serve_revision_serial",
                "gauge",
                "Serial of the notification served",
                -1 if watcher.current is None else watcher.current.serial,
                w,
            ),
            (
                "rpkirepo_serve_revision_switches_total",
                "counter",
                "Revisions switched to",
                watcher.switches,
                w,
            ),
            (
                "rpkirepo_serve_revision_failures_total",
                "counter",
                "Attempts to load a notification that were refused",
                watcher.failures,
                w,
            ),
            (
                "rpkirepo_serve_grace_files",
                "gauge",
                "Files still served in their grace period",
                len(watcher.retired),
                w,
            ),
        ]
        return out


# --------------------------------------------------------------------------------------------
# access log

_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


class AccessLog:
    """Common log format lines, or JSON lines rendered by the project's :class:`JsonFormatter`;
    buffered and flushed by the once-a-second sweep."""

    def __init__(self, target: str | None, fmt: str) -> None:
        self.target = target
        self.fmt = fmt
        self._json = JsonFormatter()
        self._sink: IO[str] | None = None
        self._second = -1
        self._stamp = ""
        self.reopen()

    def reopen(self) -> None:
        if self.target is None:
            return
        if self.target == "-":
            self._sink = sys.stdout
            return
        old = self._sink
        self._sink = open(self.target, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        if old is not None:
            old.close()

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def _clf_time(self, now: float) -> str:
        s = int(now)
        if s != self._second:
            t = time.gmtime(s)
            self._second = s
            self._stamp = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            )
        return self._stamp

    def write(
        self, host: str, req: Request | None, status: int, sent: int, kind: str, now: float
    ) -> None:
        sink = self._sink
        if sink is None:
            return
        if self.fmt == "clf":
            line = "-" if req is None else f"{req.method} {req.target} {req.version}"
            line = line.replace('"', "%22")
            size = str(sent) if sent else "-"
            sink.write(f'{host} - - [{self._clf_time(now)}] "{line}" {status} {size}\n')
            return
        record = logging.LogRecord(
            "rpkirepo.serve.access", logging.INFO, "", 0, "access", None, None
        )
        record.created = now
        record.remote = host
        record.method = req.method if req else "-"
        record.target = req.target if req else "-"
        record.status = status
        record.bytes = sent
        record.kind = kind
        record.user_agent = req.headers.get("user-agent", "-") if req else "-"
        sink.write(self._json.format(record) + "\n")

    def flush(self) -> None:
        if self._sink is not None:
            with contextlib.suppress(OSError, ValueError):
                self._sink.flush()

    def close(self) -> None:
        self.flush()
        if self._sink is not None and self._sink is not sys.stdout:
            self._sink.close()
        self._sink = None


# --------------------------------------------------------------------------------------------
# connections


class _Conn(asyncio.Protocol):
    __slots__ = (
        "busy",
        "capture",
        "core",
        "deadline",
        "deadline_reason",
        "host",
        "paused",
        "resumed",
        "server",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.core = HttpConnection(server.limits)
        self.transport: asyncio.Transport | None = None
        self.host = "-"
        self.busy = False
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.deadline_reason = Reason.SERVE_HEADER_TIMEOUT
        self.capture: bytes | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        srv = self.server
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if peer else "-"
        srv.stats.connections_total += 1
        if len(srv.conns) >= srv.limits.serve_max_connections or srv.stopping:
            srv.stats.refuse(Reason.SERVE_TOO_MANY_CONNECTIONS)
            transport.abort()
            return
        count = srv.per_address.get(self.host, 0)
        if count >= srv.limits.serve_max_connections_per_address:
            srv.stats.refuse(Reason.SERVE_TOO_MANY_PER_ADDRESS)
            transport.abort()
            return
        srv.per_address[self.host] = count + 1
        srv.conns.add(self)
        srv.stats.connections_open = len(srv.conns)
        self.deadline = srv.now + srv.limits.serve_header_timeout
        self.deadline_reason = Reason.SERVE_HEADER_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        if self in srv.conns:
            srv.conns.discard(self)
            n = srv.per_address.get(self.host, 1) - 1
            if n <= 0:
                srv.per_address.pop(self.host, None)
            else:
                srv.per_address[self.host] = n
            srv.stats.connections_open = len(srv.conns)
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_exception(ConnectionResetError("connection lost"))
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True
        self.deadline = self.server.now + self.server.limits.serve_send_timeout
        self.deadline_reason = Reason.SERVE_SEND_TIMEOUT

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        if not self.busy:
            self._process()

    def data_received(self, data: bytes) -> None:
        srv = self.server
        core = self.core
        idle = not self.busy and not self.paused and core.at_rest
        if idle and len(data) <= MAX_HEAD:
            # the fast path (._fast): a whole head we have answered before under this view
            hit = srv.cache.get(data, srv.watcher.view)
            if hit is not None:
                self._replay(hit)
                return
            if data.find(b"\r\n\r\n") == len(data) - 4:
                self.capture = data  # exactly one head: _process may store its answer
        was_waiting = not core.in_request and not core.pending
        try:
            core.feed(data)
        except RpkiRepoError as exc:
            self.capture = None
            self._refuse(exc)
            return
        if was_waiting and not self.busy and not self.paused:
            # the header-read deadline runs from a request's first byte
            self.deadline = srv.now + srv.limits.serve_header_timeout
            self.deadline_reason = Reason.SERVE_HEADER_TIMEOUT
        if not self.busy and not self.paused:
            self._process()
        elif self.transport is not None:
            # a response is in flight: read nothing more until it is out (bounded buffers)
            self.transport.pause_reading()
        self.capture = None

    def _replay(self, hit: Cached) -> None:
        """Answer a request the way :meth:`_process` did when it stored ``hit``."""
        srv = self.server
        t = self.transport
        if t is None:
            return
        now = srv.now
        req = hit.request
        if srv.limits.serve_rate_per_address:
            retry = srv.rate_check(self.host, now)
            if retry is not None:
                resp = too_many_requests(req, now, retry)
                t.write(resp.head + (resp.body if isinstance(resp.body, bytes) else b""))
                srv.record(self.host, req, resp, resp.length)
                if resp.close or srv.stopping:
                    t.close()
                else:
                    self._rest()
                return
        t.write(hit.wire(now))
        if hit.body is not None:
            t.write(hit.body)
        hit.hits += 1
        if srv.access.enabled:
            srv.access.write(self.host, req, hit.status, hit.length, hit.kind, now)
        if hit.close or srv.stopping:
            t.close()
            return
        self._rest()

    def _rest(self) -> None:
        """After an answer, with nothing buffered: wait for the next request (as
        :meth:`_process` ends)."""
        if self.paused:  # the client does not read: read nothing more until it does
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.deadline = self.server.now + self.server.limits.serve_idle_timeout
        self.deadline_reason = Reason.SERVE_IDLE_TIMEOUT

    def eof_received(self) -> bool | None:
        self.core.feed_eof()
        if not self.busy and not self.core.pending and self.transport is not None:
            self.transport.close()
        # keep the write side open until pending responses are sent (TLS transports cannot)
        return None if self.server.tls is not None else True

    # -- request handling ----------------------------------------------------------------

    def _refuse(self, exc: RpkiRepoError) -> None:
        srv = self.server
        srv.stats.refuse(exc.reason)
        resp = error_response(exc, srv.now)
        srv.stats.requests[("other", resp.status)] += 1
        srv.access.write(self.host, None, resp.status, resp.length, "other", srv.now)
        t = self.transport
        if t is not None:
            t.write(resp.head + (resp.body if isinstance(resp.body, bytes) else b""))
            t.close()

    def _process(self) -> None:
        srv = self.server
        t = self.transport
        while t is not None and not self.busy and not self.paused:
            try:
                ev = self.core.next_event()
            except RpkiRepoError as exc:
                self._refuse(exc)
                return
            if ev is NEED_DATA:
                break
            assert isinstance(ev, Request)
            now = srv.now
            resp = srv.answer(self.host, ev, now)
            body = resp.body
            if isinstance(body, FileSlice):
                t.write(resp.head)
                self.busy = True
                self.deadline = now + srv.limits.serve_send_timeout
                self.deadline_reason = Reason.SERVE_SEND_TIMEOUT
                srv.spawn(self._send_file(ev, resp, body))
                return
            if body is None:
                t.write(resp.head)
            else:
                t.write(resp.head + body)
            srv.record(self.host, ev, resp, resp.length)
            if self.capture is not None:
                # the answer to the whole input of a connection at rest: replayable (._fast)
                srv.cache.store(self.capture, ev, resp, srv.watcher.view, srv.stats.add)
                self.capture = None
            if resp.close or srv.stopping:
                t.close()
                return
            t = self.transport
        if t is None:
            return
        if self.core.in_request:
            if self.deadline_reason is not Reason.SERVE_HEADER_TIMEOUT:
                # a pipelined head began while we were answering: its deadline runs from now
                self.deadline = srv.now + srv.limits.serve_header_timeout
                self.deadline_reason = Reason.SERVE_HEADER_TIMEOUT
        elif not self.busy and not self.paused:
            if self.core.keep_alive:
                self.deadline = srv.now + srv.limits.serve_idle_timeout
                self.deadline_reason = Reason.SERVE_IDLE_TIMEOUT
            else:
                t.close()
                return
        if self.core.wants_input and not self.busy and not self.paused:
            t.resume_reading()
        else:
            t.pause_reading()

    async def _send_file(self, req: Request, resp: Response, body: FileSlice) -> None:
        srv = self.server
        sent = 0
        try:
            t = self.transport
            if t is None:
                return
            offset, remaining = body.offset, body.count
            if srv.tls is None and srv.native_sendfile:
                while remaining > 0 and self.transport is not None:
                    n = min(remaining, SENDFILE_CHUNK)
                    done = await srv.loop.sendfile(t, body.file, offset, n, fallback=False)  # type: ignore[arg-type]
                    if done <= 0:
                        raise ConnectionError("sendfile made no progress")
                    offset += done
                    remaining -= done
                    sent += done
                    self.deadline = srv.now + srv.limits.serve_send_timeout
            else:
                while remaining > 0:
                    if self.paused:
                        self.resumed = srv.loop.create_future()
                        await self.resumed
                        self.resumed = None
                    else:
                        await asyncio.sleep(0)  # let other connections run between chunks
                    t = self.transport
                    if t is None:
                        raise ConnectionError("connection lost")
                    chunk = body.file.pread(min(remaining, TLS_CHUNK), offset)
                    if not chunk:
                        srv.stats.refuse(Reason.SERVE_FILE_CHANGED)
                        raise ConnectionError("file shorter than when it was loaded")
                    t.write(chunk)
                    offset += len(chunk)
                    remaining -= len(chunk)
                    sent += len(chunk)
                    self.deadline = srv.now + srv.limits.serve_send_timeout
        except (ConnectionError, OSError, RuntimeError, asyncio.CancelledError) as exc:
            srv.record(self.host, req, resp, sent)
            if self.transport is not None:
                self.transport.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        srv.record(self.host, req, resp, sent)
        self.busy = False
        t2 = self.transport
        if t2 is None:
            return
        if resp.close or srv.stopping:
            t2.close()
            return
        self.deadline = srv.now + srv.limits.serve_idle_timeout
        self.deadline_reason = Reason.SERVE_IDLE_TIMEOUT
        self._process()


class _MetricsConn(asyncio.Protocol):
    """``GET /metrics`` on the metrics port (the same request core, a text body)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.core = HttpConnection(server.limits)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport

    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        try:
            self.core.feed(data)
            ev = self.core.next_event()
        except RpkiRepoError as exc:
            resp = error_response(exc, time.time())
            t.write(resp.head + (resp.body if isinstance(resp.body, bytes) else b""))
            t.close()
            return
        if ev is NEED_DATA:
            return
        assert isinstance(ev, Request)
        if ev.path == "/metrics":
            self.server.cache.fold(self.server.stats.add)
            body = render(self.server.stats.metrics(self.server.watcher, self.server.worker))
            data_out = body.encode()
            status = b"200 OK"
            ctype = b"text/plain; version=0.0.4"
        else:
            data_out, status, ctype = b"Not Found\n", b"404 Not Found", b"text/plain"
        t.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, ctype, len(data_out))
            + (b"" if ev.head_only else data_out)
        )
        t.close()


# --------------------------------------------------------------------------------------------
# one worker


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(Reason.CONFIG_INVALID, f"cannot load TLS certificate/key: {exc}") from exc
    return ctx


class Server:
    """One worker: listeners, connections, the revision watcher and the sweep."""

    def __init__(self, opts: ServeOptions, *, worker: int = 0, reuse_port: bool = False) -> None:
        self.opts = opts
        self.limits = opts.limits
        self.worker = worker
        self.reuse_port = reuse_port
        self.watcher = RevisionWatcher(opts.rrdp_dir, grace=opts.grace, limits=opts.limits)
        self.stats = Stats()
        self.cache = ResponseCache()
        self.access = AccessLog(opts.access_log, opts.access_log_format)
        self.tls = (
            _tls_context(opts.tls_cert, opts.tls_key)
            if opts.tls_cert is not None and opts.tls_key is not None
            else None
        )
        self.conns: set[_Conn] = set()
        self.per_address: dict[str, int] = {}
        self.buckets: dict[str, list[float]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self.metrics_address: tuple[str, int] | None = None
        self.stopping = False
        self.now = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._loading = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def native_sendfile(self) -> bool:
        """Whether ``loop.sendfile`` uses ``sendfile(2)`` (the stdlib loop does; uvloop does not,
        and then file bodies go out in ``pread`` chunks like under TLS)."""
        return isinstance(self._loop, asyncio.BaseEventLoop)

    # -- requests --------------------------------------------------------------------

    def rate_check(self, host: str, now: float) -> int | None:
        """Take a token from ``host``'s bucket; ``None`` if there was one, else the seconds to
        announce in ``Retry-After`` (the refusal is counted)."""
        rate = self.limits.serve_rate_per_address
        bucket = self.buckets.get(host)
        burst = 4.0 * rate
        if bucket is None:
            bucket = self.buckets[host] = [burst, now]
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.stats.refuse(Reason.SERVE_RATE_LIMITED)
            return max(1, int((1.0 - tokens) / rate) + 1)
        bucket[0] = tokens - 1.0
        return None

    def answer(self, host: str, req: Request, now: float) -> Response:
        if self.limits.serve_rate_per_address:
            retry = self.rate_check(host, now)
            if retry is not None:
                return too_many_requests(req, now, retry)
        resp = respond(req, self.watcher.view, now)
        if req.path is None:
            self.stats.refuse(Reason.SERVE_PATH_REFUSED)
        return resp

    def record(self, host: str, req: Request, resp: Response, sent: int) -> None:
        self.stats.requests[(resp.kind, resp.status)] += 1
        if sent:
            self.stats.bytes[resp.kind] += sent
        if self.access.enabled:
            self.access.write(host, req, resp.status, sent, resp.kind, self.now)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.now = time.time()
        rev = self.watcher.load() if self.watcher.needs_load() else None
        if rev is not None:
            self.watcher.switch(rev, self.now)
        elif self.watcher.current is None:
            log.warning(
                "no loadable notification in %s yet: /healthz answers 503 until one appears",
                self.opts.rrdp_dir,
                extra={"reason": Reason.SERVE_REVISION_UNLOADABLE.value},
            )
        for host, port in self.opts.listen:
            srv = await self.loop.create_server(
                lambda: _Conn(self),
                host=host,
                port=port,
                ssl=self.tls,
                ssl_handshake_timeout=float(self.limits.serve_header_timeout) if self.tls else None,
                reuse_port=self.reuse_port or None,
                backlog=4096,
            )
            self.servers.append(srv)
            for sock in srv.sockets:
                addr = sock.getsockname()
                self.addresses.append((str(addr[0]), int(addr[1])))
        if self.opts.metrics_listen is not None:
            mhost, mport = self.opts.metrics_listen
            if mport and self.worker:
                mport += self.worker
            msrv = await self.loop.create_server(lambda: _MetricsConn(self), host=mhost, port=mport)
            self.servers.append(msrv)
            addr = msrv.sockets[0].getsockname()
            self.metrics_address = (str(addr[0]), int(addr[1]))
        self.spawn(self._sweep())

    async def _sweep(self) -> None:
        next_poll = 0.0
        while not self.stopping:
            await asyncio.sleep(min(SWEEP_INTERVAL, self.opts.poll_interval))
            self.tick()
            if self.now >= next_poll:
                next_poll = self.now + self.opts.poll_interval
                # loading runs in a thread; the deadlines above keep being enforced meanwhile
                self.spawn(self.check_revision())

    def tick(self) -> None:
        now = self.now = time.time()
        expired = [c for c in self.conns if c.deadline <= now]
        for c in expired:
            self.stats.refuse(c.deadline_reason)
            if c.transport is not None:
                c.transport.abort()
        if self.buckets:
            rate = self.limits.serve_rate_per_address or 1
            stale = [h for h, b in self.buckets.items() if now - b[1] > 4.0 * 4 / rate + 60]
            for h in stale:
                del self.buckets[h]
        self.watcher.expire(now)
        self.cache.fold(self.stats.add)
        self.access.flush()

    async def check_revision(self, force: bool = False) -> None:
        if self._loading or not (force or self.watcher.needs_load()):
            return
        self._loading = True
        try:
            rev = await asyncio.to_thread(self.watcher.load)
        finally:
            self._loading = False
        if rev is not None:
            self.watcher.switch(rev, time.time())

    def reload(self) -> None:
        """SIGHUP: TLS material, the notification, the access log."""
        log.warning("reloading (SIGHUP)", extra={"reason": "reload"})
        if (
            self.tls is not None
            and self.opts.tls_cert is not None
            and self.opts.tls_key is not None
        ):
            try:
                self.tls.load_cert_chain(str(self.opts.tls_cert), str(self.opts.tls_key))
            except (OSError, ssl.SSLError) as exc:
                log.error(
                    "keeping the old TLS certificate: %s",
                    exc,
                    extra={"reason": Reason.CONFIG_INVALID.value},
                )
        try:
            self.access.reopen()
        except OSError as exc:
            log.error(
                "cannot reopen the access log: %s", exc, extra={"reason": Reason.STORAGE_IO.value}
            )
        self.spawn(self.check_revision(force=True))

    def request_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for srv in self.servers:
            srv.close()
        for c in list(self.conns):
            if not c.busy and not c.core.pending and c.transport is not None:
                c.transport.close()
        self.spawn(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.limits.serve_send_timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        assert self._stopped is not None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()
        for srv in self.servers:
            srv.close()
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self.access.close()


# --------------------------------------------------------------------------------------------
# process entry points


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _worker_main(opts: ServeOptions, worker: int, reuse_port: bool) -> int:
    server = Server(opts, worker=worker, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    scheme = "https" if server.tls else "http"
    for host, port in server.addresses:
        shown = f"[{host}]" if ":" in host else host
        log.warning(
            "worker %d serving %s on %s://%s:%d/",
            worker,
            opts.rrdp_dir,
            scheme,
            shown,
            port,
            extra={"reason": "listening"},
        )
    if server.metrics_address is not None:
        host, port = server.metrics_address
        shown = f"[{host}]" if ":" in host else host
        log.warning(
            "worker %d metrics on http://%s:%d/metrics",
            worker,
            shown,
            port,
            extra={"reason": "listening"},
        )
    await server.wait_stopped()
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or for ``auto`` when it is installed; else the stdlib loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                Reason.USAGE, "--event-loop uvloop: uvloop is not installed"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_loop(opts: ServeOptions, worker: int, reuse_port: bool) -> int:
    with asyncio.Runner(loop_factory=_loop_factory(opts.event_loop)) as runner:
        return runner.run(_worker_main(opts, worker, reuse_port))


def _resolve_ports(
    listen: tuple[tuple[str, int], ...],
) -> tuple[list[socket.socket], tuple[tuple[str, int], ...]]:
    """For several workers: bind each address once with SO_REUSEPORT to fix port 0 to a real
    port; the (not listening) sockets are kept so the port stays ours."""
    holders: list[socket.socket] = []
    out: list[tuple[str, int]] = []
    for host, port in listen:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        fam, _, _, _, addr = infos[0]
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            s.close()
            for h in holders:
                h.close()
            raise ConfigError(
                Reason.CONFIG_INVALID, f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        holders.append(s)
        out.append((host, int(s.getsockname()[1])))
    return holders, tuple(out)


def run_server(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    _raise_nofile()
    if opts.workers == 1:
        return _run_loop(opts, 0, False)
    holders, listen = _resolve_ports(opts.listen)
    opts = ServeOptions(
        rrdp_dir=opts.rrdp_dir,
        listen=listen,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        workers=opts.workers,
        metrics_listen=opts.metrics_listen,
        grace=opts.grace,
        access_log=opts.access_log,
        access_log_format=opts.access_log_format,
        poll_interval=opts.poll_interval,
        event_loop=opts.event_loop,
        limits=opts.limits,
    )
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                for h in holders:
                    h.close()
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                code = _run_loop(opts, index, True)
            except RpkiRepoError as exc:
                print(f"rpkirepo: worker {index}: error {exc}", file=sys.stderr)
            except BaseException:  # a worker must never return into the parent's code
                logging.getLogger("rpkirepo.serve").exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(opts.workers):
        spawn(i)
    status = 0
    restarts: list[float] = []
    try:
        while children:
            try:
                pid, wstatus = os.wait()
            except InterruptedError:
                continue
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if stopping:
                status = status or (code if code > 0 else 0)
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            log.error(
                "worker %d exited (%d); restarting it", index, code, extra={"reason": "worker-exit"}
            )
            if len(restarts) > 10 * opts.workers:
                log.error("workers keep dying; stopping", extra={"reason": "worker-exit"})
                stopping = True
                forward(signal.SIGTERM, None)
                status = 1
                continue
            spawn(index)
    finally:
        for h in holders:
            h.close()
    return status
