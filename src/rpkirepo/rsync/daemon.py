"""The asyncio adapter of the rsync daemon: sockets, deadlines, connection caps, metrics, logs.

Everything protocol-related happens in :class:`~rpkirepo.rsync.Session`; this module only moves
bytes between a socket and a session, and enforces what needs a clock or a global view:

* deadlines: the handshake (connect to end of filter list, ``rsync_handshake_timeout``), idle
  I/O in either direction (``rsync_idle_timeout``, lowered by the client's ``--timeout``), and
  the whole session (``rsync_session_timeout``).  A client that stops reading is cut off by the
  idle deadline on ``drain()``, which frees its slot;
* caps on concurrent connections, in total and per client address: over the cap the client gets
  ``@ERROR: max connections ... reached`` and is closed, as rsyncd does;
* revision polling: each module's ``current`` symlink is checked every ``rsync_revision_poll``
  seconds and a new revision is loaded in a worker thread, then swapped in atomically;
* counters (connections, bytes, files, refusals by reason) and one log line per session end
  with its reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rpkirepo.errors import Reason, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.metrics import Metric
from rpkirepo.rsync._session import (
    SERVER_PROTOCOL,
    ClientMessage,
    ModuleListed,
    Session,
    SessionEnded,
    SpoolRange,
    TransferStarted,
)
from rpkirepo.rsync.tree import DEFAULT_SPOOL_DIR, ModuleWatcher

__all__ = ["RsyncDaemon", "RsyncdCounters", "serve_rsync"]

log = logging.getLogger("rpkirepo.rsyncd")

#: Input read at once; the stream reader buffers at most twice this before it stops reading.
READ_SIZE = 16 * 1024
#: Output handed to the transport at once.  The next chunk is produced only once the kernel
#: took the previous one (the transport's buffer is drained to empty), so a session whose
#: client reads slowly holds at most about one chunk in Python.
WRITE_CHUNK = 16 * 1024
CLOSE_GRACE = 2.0
#: Threads that build file lists (the first client of an option set): their own pool, so
#: builds never hold up revision loads; builds of one revision run one at a time anyway.
LIST_BUILDERS = 2


@dataclass
class RsyncdCounters:
    connections: int = 0
    active: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    files_sent: int = 0
    #: bytes of full-sync answers sent from revision spools (sendfile)
    spool_bytes_sent: int = 0
    sessions_ok: int = 0
    listings: int = 0
    refusals: Counter[str] = field(default_factory=Counter)


class RsyncDaemon:
    """Serves ``modules`` (name -> directory holding ``current``) until :meth:`close`."""

    def __init__(
        self,
        modules: Mapping[str, Path],
        limits: Limits = DEFAULT_LIMITS,
        *,
        spool_dir: Path | None = DEFAULT_SPOOL_DIR,
    ) -> None:
        self.limits = limits
        self.watchers = {
            name: ModuleWatcher(name, Path(d), limits, spool_dir=spool_dir)
            for name, d in modules.items()
        }
        self.catalog = {name: w.get for name, w in self.watchers.items()}
        self.counters = RsyncdCounters()
        self._per_address: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._list_pool = ThreadPoolExecutor(LIST_BUILDERS, thread_name_prefix="rsync-flist")

    # --- revisions ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Load a new revision of every module whose ``current`` moved."""
        for watcher in self.watchers.values():
            try:
                target = watcher.changed()
            except RpkiRepoError as exc:
                log.error("module %s: %s", watcher.name, exc, extra={"reason": exc.reason.value})
                continue
            if target is None:
                continue
            revision = await asyncio.to_thread(watcher.load, target)
            if revision is not None:
                watcher.install(target, revision)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(max(self.limits.rsync_revision_poll, 1))
            await self.refresh()

    # --- listening ----------------------------------------------------------------------

    async def start(self, listen: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Load every module, listen, start polling; returns the bound (host, port) pairs."""
        await self.refresh()
        bound: list[tuple[str, int]] = []
        for host, port in listen:
            server = await asyncio.start_server(
                self._accept, host, port, reuse_address=True, limit=READ_SIZE
            )
            self._servers.append(server)
            for sock in server.sockets:
                name = sock.getsockname()
                bound.append((str(name[0]), int(name[1])))
        self._poller = asyncio.create_task(self._poll())
        log.info("rsync daemon listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        return bound

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._list_pool.shutdown(wait=False, cancel_futures=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._connection(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    # --- one connection -----------------------------------------------------------------

    def _refuse_early(self, reason: Reason, addr: str) -> bytes:
        self.counters.refusals[reason.value] += 1
        log.warning("refusing %s: too many connections", addr, extra={"reason": reason.value})
        return (
            f"@RSYNCD: {SERVER_PROTOCOL}.0\n@ERROR: max connections reached -- try again later\n"
        ).encode()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.counters.connections += 1
        lim = self.limits
        if self.counters.active >= lim.rsync_max_connections:
            await self._close(writer, self._refuse_early(Reason.RSYNC_TOO_MANY_CONNECTIONS, addr))
            return
        if self._per_address[addr] >= lim.rsync_max_connections_per_address:
            await self._close(writer, self._refuse_early(Reason.RSYNC_TOO_MANY_PER_ADDRESS, addr))
            return
        self.counters.active += 1
        self._per_address[addr] += 1
        session = Session(self.catalog, lim, defer_lists=True)
        try:
            await self._run(session, reader, writer, addr)
        finally:
            self._events(session, addr)
            self.counters.bytes_received += session.bytes_in
            self.counters.files_sent += session.files_sent
            await self._close(writer, b"")
            self.counters.active -= 1
            self._per_address[addr] -= 1
            if self._per_address[addr] <= 0:
                del self._per_address[addr]

    async def _run(
        self,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        addr: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        handshake_end = started + self.limits.rsync_handshake_timeout
        session_end = started + self.limits.rsync_session_timeout

        def budget() -> tuple[float, Reason]:
            now = loop.time()
            options = [
                (session.idle_timeout, Reason.RSYNC_IDLE_TIMEOUT),
                (session_end - now, Reason.RSYNC_SESSION_TIMEOUT),
            ]
            if not session.handshake_done:
                options.append((handshake_end - now, Reason.RSYNC_HANDSHAKE_TIMEOUT))
            return min(options, key=lambda o: o[0])

        transport = writer.transport
        transport.set_write_buffer_limits(high=0)  # drain() waits for an empty buffer
        try:
            while True:
                out = session.output(WRITE_CHUNK)
                self._events(session, addr)
                if isinstance(out, SpoolRange):
                    timeout, reason = budget()
                    try:
                        async with asyncio.timeout(max(timeout, 0)):
                            await _send_range(loop, writer, out)
                    except TimeoutError:
                        session.abort(reason, "timeout sending to the client")
                        return
                    self.counters.bytes_sent += out.count
                    self.counters.spool_bytes_sent += out.count
                    continue
                if out:
                    writer.write(out)
                    self.counters.bytes_sent += len(out)
                    if not transport.get_write_buffer_size():
                        # The socket took it: let other sessions run, then go on.
                        await asyncio.sleep(0)
                        continue
                    timeout, reason = budget()
                    try:
                        async with asyncio.timeout(max(timeout, 0)):
                            await writer.drain()
                    except TimeoutError:
                        session.abort(reason, "timeout sending to the client")
                        return
                    continue
                if session.finished:
                    return
                if session.list_wanted:
                    # A list this revision has not built yet (the first client with these
                    # options): built in a worker thread, so other sessions go on meanwhile.
                    # The session's deadlines run; a build cut off still finishes (and is
                    # cached) in its thread.
                    timeout, reason = budget()
                    try:
                        async with asyncio.timeout(max(timeout, 0)):
                            flist = await loop.run_in_executor(self._list_pool, session.build_list)
                    except TimeoutError:
                        session.abort(reason, "timeout building the file list")
                        await self._flush(session, writer)
                        return
                    except RpkiRepoError as exc:
                        session.list_failed(exc)
                        raise
                    session.list_built(flist)
                    continue
                if not session.wants_input:
                    # Nothing to send and no room to read: cannot happen with a well-formed
                    # stream (input is consumed as it is parsed); end rather than spin.
                    session.abort(Reason.RSYNC_SEQUENCE, "input backlog with nothing to send")
                    await self._flush(session, writer)
                    return
                timeout, reason = budget()
                try:
                    async with asyncio.timeout(max(timeout, 0)):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    session.abort(reason, "timeout")
                    await self._flush(session, writer)
                    return
                session.receive_data(data)
        except RpkiRepoError:
            await self._flush(session, writer)
        except (ConnectionError, OSError) as exc:
            session.abort(Reason.RSYNC_EOF, f"connection error: {exc}")

    async def _flush(self, session: Session, writer: asyncio.StreamWriter) -> None:
        """Best effort: send what the session queued (an error message) within a grace time."""
        try:
            out = session.data_to_send(WRITE_CHUNK)
        except RpkiRepoError:
            out = b""
        if out and not writer.is_closing():
            writer.write(out)
            self.counters.bytes_sent += len(out)
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                await asyncio.wait_for(writer.drain(), CLOSE_GRACE)

    async def _close(self, writer: asyncio.StreamWriter, last: bytes) -> None:
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if last:
                writer.write(last)
                await asyncio.wait_for(writer.drain(), CLOSE_GRACE)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)

    def _events(self, session: Session, addr: str) -> None:
        while (event := session.next_event()) is not None:
            if isinstance(event, TransferStarted):
                log.info(
                    "%s: module %s revision %s path %r protocol %d: %d entries%s",
                    addr, event.module, event.revision, event.path, event.protocol,
                    event.files, " (-z)" if event.compress else "",
                )  # fmt: skip
            elif isinstance(event, ModuleListed):
                self.counters.listings += 1
                log.info("%s: module list", addr)
            elif isinstance(event, ClientMessage):
                log.info("%s: client says: %s", addr, event.text.strip()[:200])
            elif isinstance(event, SessionEnded):
                if event.reason is None:
                    self.counters.sessions_ok += 1
                    log.info(
                        "%s: session done: %d files, %d bytes sent",
                        addr, session.files_sent, session.bytes_out,
                    )  # fmt: skip
                else:
                    self.counters.refusals[event.reason.value] += 1
                    log.warning(
                        "%s: session ended: %s", addr, event.detail,
                        extra={"reason": event.reason.value},
                    )  # fmt: skip

    # --- metrics ------------------------------------------------------------------------

    def metrics(self) -> list[Metric]:
        c = self.counters
        out: list[Metric] = [
            ("rpkirepo_rsyncd_connections_total", "counter", "rsync connections accepted",
             c.connections, {}),
            ("rpkirepo_rsyncd_connections_active", "gauge", "rsync connections open", c.active, {}),
            ("rpkirepo_rsyncd_bytes_sent_total", "counter", "bytes sent to rsync clients",
             c.bytes_sent, {}),
            ("rpkirepo_rsyncd_bytes_received_total", "counter", "bytes read from rsync clients",
             c.bytes_received, {}),
            ("rpkirepo_rsyncd_files_sent_total", "counter", "files sent to rsync clients",
             c.files_sent, {}),
            ("rpkirepo_rsyncd_spool_bytes_sent_total", "counter",
             "bytes of full-sync answers sent from revision spools", c.spool_bytes_sent, {}),
            ("rpkirepo_rsyncd_sessions_total", "counter", "rsync sessions that ended cleanly",
             c.sessions_ok, {}),
            ("rpkirepo_rsyncd_listings_total", "counter", "module listings served",
             c.listings, {}),
        ]  # fmt: skip
        for reason, n in sorted(c.refusals.items()):
            out.append(
                ("rpkirepo_rsyncd_refusals_total", "counter",
                 "rsync sessions refused or aborted, by reason", n, {"reason": reason})
            )  # fmt: skip
        for name, w in sorted(self.watchers.items()):
            out.append(
                ("rpkirepo_rsyncd_revision_loads_total", "counter",
                 "revisions loaded per module", w.loads, {"module": name})
            )  # fmt: skip
            spooled = int(w.revision is not None and w.revision.spool is not None)
            out.append(
                ("rpkirepo_rsyncd_revision_spooled", "gauge",
                 "1 when the module's current revision has a spool", spooled, {"module": name})
            )  # fmt: skip
        return out


async def _send_range(
    loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter, part: SpoolRange
) -> None:
    """Send a spool range: ``sendfile`` from the spool (no copy through Python) where the loop
    and transport can, else read and write."""
    fd = part.source.fileno()
    if fd >= 0:
        try:
            # The descriptor stays the spool's (closefd=False); the offset is explicit, so
            # sessions sharing it do not mind the file position sendfile leaves behind.
            with open(fd, "rb", buffering=0, closefd=False) as spool:
                await loop.sendfile(
                    writer.transport, spool, part.offset, part.count, fallback=False
                )
            return
        except (asyncio.SendfileNotAvailableError, NotImplementedError):
            pass  # another event loop or transport: read and write instead
    writer.write(part.read())
    await writer.drain()


async def serve_rsync(
    listen: list[tuple[str, int]],
    modules: Mapping[str, Path],
    limits: Limits = DEFAULT_LIMITS,
    *,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
    stop: asyncio.Event | None = None,
    spool_dir: Path | None = DEFAULT_SPOOL_DIR,
) -> RsyncDaemon:
    """Run the daemon until ``stop`` is set (forever without one); ``ready`` gets the bound
    addresses once it listens; ``spool_dir``: where revision spools go (``None``: none).
    Returns the daemon (for its counters) after it closed."""
    daemon = RsyncDaemon(modules, limits, spool_dir=spool_dir)
    bound = await daemon.start(listen)
    if ready is not None:
        ready(bound)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await daemon.close()
    return daemon
