"""One rsync daemon session (sender only), sans-I/O: bytes in, events and bytes out.

Theory of operation.  The I/O layer creates a :class:`Session` per connection, sends whatever
:meth:`Session.data_to_send` returns, feeds every byte it reads to :meth:`Session.receive_data`
(``b""`` at end of file), and reads :meth:`Session.next_event` for logs and metrics.  The session
walks the daemon protocol (rsync-wire §3; rsync clientserver.c ``start_daemon``/``rsync_module``,
main.c ``start_server``/``do_server_sender``, sender.c ``send_files``, io.c framing):

1. greeting ``@RSYNCD: 31.0`` (sent at once) / the client's greeting -> negotiated protocol;
2. module line -> ``@RSYNCD: OK``, or a module listing, or ``@ERROR``;
3. server arguments (NUL-separated at >= 30, newline-separated at 27), against an allow-list;
4. compat flags (>= 30) and checksum seed; from here every byte we send is multiplexed, and at
   >= 30 every byte we receive is too;
5. the client's filter rules, then the file list (encoded once per revision and option set);
6. requests: index (+ item flags at >= 30) + sum head + block sums, which are read and
   discarded; the answer is the whole file as literal data (or its deflated form with ``-z``)
   and the whole-file checksum (computed when the revision was loaded).  No block matching,
   ever;
7. end phases, statistics, goodbye.

File bodies are not held in memory: they are read through the revision's
:class:`~rpkirepo.rsync._model.BodySource` as they are answered.  At protocol >= 30 without
``-z`` (every rsync 3.x RP), the requests waiting in the input are answered in batches
(:meth:`Session._answer_batch`): parsed straight from the buffered bytes, their header echoed
from those bytes, the bodies and digests joined into one write, with no object per request;
anything unusual (end of phase, deletion statistics, basis or alternate names, block sums not
yet all received, a large file) goes through the general one-request path.

When the revision has a spool (see :func:`~rpkirepo.rsync._model.spool_segment`), a run of a
full sync's requests (every directory and file in list order, as rsync 3.x asks for them when
it has nothing yet) is answered with a :class:`SpoolRange`: whole frames of the spool, which
an I/O layer that can sends with ``sendfile`` (:meth:`Session.output`; :meth:`data_to_send`
reads them instead).  Large file lists are sent from the spool the same way.

Input is parsed from a commit/rollback buffer, so any split of the byte stream gives the same
result; every length the client sends is capped by a named :class:`~rpkirepo.limits.Limits`
field before anything is allocated.  Block sums are skipped as they arrive, never buffered.  While
a file is being sent, no further request is parsed: output is produced lazily, one frame at a
time, as the I/O layer asks for it, so a client that does not read costs no memory.

Errors: anything the client gets wrong raises :class:`RemoteProtocolError` or
:class:`LimitExceeded` out of :meth:`receive_data` (or :meth:`data_to_send`), after queueing the
message the client should print (``@ERROR: ...`` before the module is accepted, a multiplexed
``rsync: ...`` error after).  The session is then FAILED: send what is queued and close.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from struct import Struct
from typing import Final

import xxhash

from rpkirepo.errors import (
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._args import ServerArgs, parse_server_args
from rpkirepo.rsync._filters import FilterSet
from rpkirepo.rsync._model import (
    LITERAL_CHUNK,
    NEW_DIR_REQUEST,
    NEW_FILE_REQUEST,
    SPOOL_CHECKSUM,
    SPOOL_FRAME,
    Checksum,
    FileList,
    FlistOptions,
    Revision,
    SpoolIndex,
    SpoolSource,
    check_scope,
    spool_file_offset,
    xxh128,
    xxh128_bytes,
)
from rpkirepo.rsync._state import State, transition
from rpkirepo.rsync._wire import (
    NDX_DEL_STATS,
    NDX_DONE,
    Buffer,
    Msg,
    NdxReader,
    NdxWriter,
    NeedData,
    frame,
    frame_head,
    frame_header,
    int32,
    longint,
    read_varint,
    read_vstring,
    varint,
    varlong,
    vstring,
)

__all__ = [
    "SERVER_PROTOCOL",
    "ClientMessage",
    "Event",
    "FileSent",
    "ModuleListed",
    "Session",
    "SessionEnded",
    "SpoolRange",
    "TransferStarted",
]

SERVER_PROTOCOL: Final = 31
MIN_PROTOCOL: Final = 27
SUPPORTED: Final = frozenset({27, 30, 31})
MAX_DATA_FRAME_OUT: Final = 32768
MAX_XNAME: Final = 1023
#: Unparsed input a session takes before it stops reading (a client's generator runs ahead,
#: sending requests and block sums; they wait in the kernel, not in our memory).  A frame
#: longer than this is still read whole (up to ``rsync_max_data_frame``).
MAX_INPUT_BACKLOG: Final = 16 * 1024
_I32: Final = Struct("<i")
_I32X4: Final = Struct("<4i")
#: Requests are answered until this much output waits to be sent, then parsing pauses: the
#: output a session holds (beyond one answer) is bounded by it.
OUTPUT_HIGH_WATER: Final = 16 * 1024
#: Files up to this size are answered at once; larger ones are read and produced frame by
#: frame as the output drains.
SMALL_BODY_MAX: Final = 256 * 1024
#: The most output of one spool range (one ``sendfile``).
SPOOL_RANGE_MAX: Final = 4 << 20
#: How much buffered input one batch of requests is parsed from.
BATCH_INPUT: Final = 16384
_FRAME_HEAD: Final = frame_head(Msg.DATA, MAX_DATA_FRAME_OUT)  # a full MSG_DATA frame
_BYTE: Final = tuple(bytes([i]) for i in range(256))
_ZERO4: Final = bytes(4)

# rsync.h ITEM_* bits used by the sender.
ITEM_BASIS_TYPE_FOLLOWS: Final = 1 << 11
ITEM_XNAME_FOLLOWS: Final = 1 << 12
ITEM_TRANSFER: Final = 1 << 15
# compat.c CF_* bits we may set (never INC_RECURSE or ID0_NAMES).
CF_SAFE_FLIST: Final = 0x08
CF_CHKSUM_SEED_FIX: Final = 0x20
CF_VARINT_FLIST_FLAGS: Final = 0x80
#: What we offer when the client negotiates (its ``-e`` info has ``v``): the checksums we
#: compute, and the compressors whose stream we send (zlibx and zlib differ only in matched
#: data, which we never send).  A client takes the name of our list it ranks highest (its
#: own list is its ranking), so we take the first name of its list that we offer: the same
#: pick, whatever order its list is in (RSYNC_CHECKSUM_LIST).
CHECKSUM_OFFER: Final = (Checksum.XXH128, Checksum.MD5)
COMPRESS_OFFER: Final = ("zlibx", "zlib")
#: rsync's MAX_NSTR_STRLEN less its NUL: the longest name list either side may send.
MAX_NAME_LIST: Final = 255

_GREETING_RE: Final = re.compile(rb"@RSYNCD: (\d{1,4})(?:\.(\d{1,4}))?(?: [ -~]*)?")
_MODULE_RE: Final = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleListed:
    """The client asked for the module list and got it."""


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """The file list went out."""

    module: str
    revision: str
    protocol: int
    files: int
    path: str
    compress: bool


@dataclass(frozen=True, slots=True)
class FileSent:
    """A file went out (no longer emitted per file: see :attr:`Session.files_sent`)."""

    name: str
    size: int
    wire_bytes: int


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A message the client multiplexed to us (INFO, WARNING, ERROR ...)."""

    tag: int
    text: str


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over; ``reason`` is ``None`` for a clean end."""

    reason: Reason | None
    detail: str = ""


Event = ModuleListed | TransferStarted | FileSent | ClientMessage | SessionEnded

Catalog = Mapping[str, Callable[[], Revision | None]]
"""Module name -> a function returning the module's current revision (``None``: not loaded)."""


@dataclass(slots=True)
class _Request:
    ndx: int
    iflags: int
    basis: int | None
    xname: bytes | None
    head: tuple[int, int, int, int] | None
    skip: int


@dataclass(frozen=True, slots=True)
class SpoolRange:
    """Output to send as it is: ``count`` bytes at ``offset`` of a revision's spool, whole
    MSG_DATA frames (see :func:`~rpkirepo.rsync._model.spool_segment`).  An adapter sends it
    with ``sendfile`` (``source.fileno()``) or reads it (:meth:`read`)."""

    source: SpoolSource
    offset: int
    count: int

    def read(self) -> bytes:
        return self.source.read(self.offset, self.count)


def _negotiate(client: int, sub: int) -> int:
    negotiated = min(SERVER_PROTOCOL, client)
    if negotiated == client and sub != 0:
        negotiated = client - 1
    return negotiated


class Session:
    """See the module docstring.  With ``defer_lists``, a file list the revision has not built
    yet is left to the I/O layer (:attr:`list_wanted`), which builds it off its event loop."""

    def __init__(
        self, catalog: Catalog, limits: Limits = DEFAULT_LIMITS, *, defer_lists: bool = False
    ) -> None:
        self.catalog = catalog
        self.limits = limits
        self.defer_lists = defer_lists
        self._list_job: tuple[FlistOptions, FilterSet] | None = None
        self.state = State.GREETING
        self.protocol = 0
        self.module = ""
        self.args: ServerArgs | None = None
        #: the whole-file checksum (MD4 below protocol 30; MD5, or what was negotiated, above)
        self.checksum = Checksum.MD5
        self._varint_flags = False  # CF_VARINT_FLIST_FLAGS
        self.revision: Revision | None = None
        self.flist: FileList | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.files_sent = 0
        self._raw = Buffer()
        self._data = self._raw
        self._muxed_in = False
        self._frame_want = 0  # raw bytes the frame being read needs (0: none under way)
        self._muxed_out = False
        self._eof = False
        self._out: deque[bytes | SpoolRange] = deque()
        self._generated = 0
        self._out_bytes = 0
        self._paused = False
        self._premux_consumed = 0
        self._data_out = bytearray()
        self._producer: Iterator[bytes | memoryview] | None = None
        self._events: deque[Event] = deque()
        self._raw_args: list[bytes] = []
        self._args_bytes = 0
        self._rules: list[bytes] = []
        self._rules_bytes = 0
        self._seed = 0
        self._ndx_in = NdxReader()
        self._ndx_out = NdxWriter()
        self._ndx_mark = (self._ndx_in.prev_pos, self._ndx_in.prev_neg)
        self._phase = 0
        self._request: _Request | None = None
        #: the highest index asked for in phase 0, where each request was above the previous
        #: one (rsync asks in list order); any other request is counted in ``_seen`` (one bit
        #: per index, made on first need) and ``_repeats`` (see :meth:`_count_request`)
        self._first_last = -1
        self._seen: bytearray | None = None
        self._repeats: dict[int, int] = {}  # index -> times in ``_seen``, past the first
        self._sum_bytes = 0
        self._del_stats = 0
        self._ended = False
        self._send_raw(f"@RSYNCD: {SERVER_PROTOCOL}.0\n".encode())

    # --- public API ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The session is over and everything queued has been handed out."""
        return (
            self.state in (State.DONE, State.FAILED)
            and not self._out
            and not self._data_out
            and self._producer is None
        )

    @property
    def wants_input(self) -> bool:
        """Whether the I/O layer should read more (false while a backlog waits for output)."""
        if self.state in (State.DONE, State.FAILED) or self._eof:
            return False
        raw = self._raw.available()
        backlog = raw + (self._data.available() if self._data is not self._raw else 0)
        return backlog < MAX_INPUT_BACKLOG or raw < self._frame_want

    @property
    def handshake_done(self) -> bool:
        return self.state in (State.TRANSFER, State.GOODBYE, State.GOODBYE2, State.DONE)

    @property
    def idle_timeout(self) -> int:
        """The client's ``--timeout`` capped by ours (0 from the client means ours)."""
        cap = self.limits.rsync_idle_timeout
        asked = self.args.timeout if self.args is not None else 0
        return min(asked, cap) if asked > 0 else cap

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def list_wanted(self) -> bool:
        """The session waits for its file list (``defer_lists``): call :meth:`build_list`
        (anywhere: in a worker thread), then :meth:`list_built` or :meth:`list_failed`."""
        return self._list_job is not None

    def build_list(self) -> FileList:
        """Build the file list the session waits for.  Touches only the revision (its list
        cache and spool, under its lock), so it may run in another thread; raises
        :class:`~rpkirepo.errors.LimitExceeded` for filters that cost too much."""
        job, revision = self._list_job, self.revision
        assert job is not None and revision is not None
        return revision.file_list(job[0], job[1], self.limits.rsync_max_filter_work)

    def list_built(self, flist: FileList) -> None:
        """The list :meth:`build_list` returned: send it and go on."""
        assert self._list_job is not None
        self._list_job = None
        self._guard(lambda: self._list_ready(flist))
        self._guard(self._advance)

    def list_failed(self, exc: RpkiRepoError) -> None:
        """:meth:`build_list` raised ``exc``: the session fails with it (the client is told)."""
        self._list_job = None
        if self.state not in (State.DONE, State.FAILED):
            self._fail(exc)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the client (``b""``: end of file)."""
        if self.state in (State.DONE, State.FAILED):
            return
        if data:
            self.bytes_in += len(data)
            self._raw.feed(data)
        else:
            self._eof = True
        self._guard(self._advance)

    def data_to_send(self, max_bytes: int = 256 * 1024) -> bytes:
        """Up to about ``max_bytes`` of output, produced lazily; ``b""`` when nothing is due."""
        out = self.output(max_bytes)
        return out.read() if isinstance(out, SpoolRange) else out

    def output(self, max_bytes: int = 256 * 1024) -> bytes | SpoolRange:
        """:meth:`data_to_send` for an adapter that can ``sendfile``: a spool range comes
        alone, unread."""
        out: list[bytes] = []
        size = 0
        while size < max_bytes:
            if self._out:
                item = self._out[0]
                if isinstance(item, SpoolRange):
                    if out:
                        break
                    self._out.popleft()
                    self.bytes_out += item.count
                    return item
                self._out.popleft()
                self._out_bytes -= len(item)
                out.append(item)
                size += len(item)
                continue
            if self._producer is not None:
                chunk = self._produce(self._producer)
                if chunk is None:
                    self._producer = None
                    self._guard(self._advance)
                else:
                    self._send_data(chunk)
                continue
            if self._data_out:
                self._flush_data()
                continue
            if self._paused:
                # Output went out: parse the requests that were waiting for room.
                self._paused = False
                self._guard(self._advance)
                if self._out or self._data_out or self._producer is not None:
                    continue
            break
        self.bytes_out += size
        return out[0] if len(out) == 1 else b"".join(out)

    def _produce(self, producer: Iterator[bytes | memoryview]) -> bytes | memoryview | None:
        # A producer reads file bodies: a file gone under the revision fails the session.
        try:
            return next(producer, None)
        except RpkiRepoError as exc:
            if self.state not in (State.DONE, State.FAILED):
                self._fail(exc)
            raise

    def abort(self, reason: Reason, detail: str) -> None:
        """End the session from outside (a deadline): queue an error for the client."""
        if self.state in (State.DONE, State.FAILED):
            return
        self._fail(RemoteProtocolError(reason, detail))

    # --- output helpers -----------------------------------------------------------------

    def _send_raw(self, data: bytes) -> None:
        self._generated += len(data)
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        self._out_bytes += len(data)
        self._out.append(data)

    def _send_data(self, data: bytes | bytearray | memoryview) -> None:
        self._send_pieces([data])

    def _send_pieces(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the pieces one after the other as data: full MSG_DATA frames cut in one join,
        the rest held until more data comes (or :meth:`_flush_data`)."""
        if not self._muxed_out:
            self._send_raw(b"".join(pieces))
            return
        total = sum(map(len, pieces))
        self._generated += total
        pending = self._data_out
        if len(pending) + total < MAX_DATA_FRAME_OUT:
            for piece in pieces:
                pending += piece
            return
        out: list[bytes | bytearray | memoryview] = [_FRAME_HEAD, pending]
        room = MAX_DATA_FRAME_OUT - len(pending)  # what the open frame still takes
        last_head = 0
        for piece in pieces:
            view = memoryview(piece)
            n = len(view)
            off = 0
            while n - off >= room:
                out.append(view[off : off + room])
                off += room
                last_head = len(out)
                out.append(_FRAME_HEAD)
                room = MAX_DATA_FRAME_OUT
            if off < n:
                out.append(view[off:])
                room -= n - off
        # The last frame is not full: its bytes wait for more data.
        rest = b"".join(out[last_head + 1 :])
        del out[last_head:]
        self._queue(b"".join(out))
        self._data_out = bytearray(rest)

    def _flush_data(self) -> None:
        if self._data_out:
            self._queue(frame(Msg.DATA, self._data_out))
            self._data_out.clear()

    def _send_message(self, tag: Msg, text: str) -> None:
        if self.protocol < 30 and tag in (Msg.ERROR, Msg.WARNING):
            tag = Msg.ERROR_XFER if tag == Msg.ERROR else Msg.INFO
        self._flush_data()
        self._queue(frame(tag, text.encode("utf-8", "replace")[:4000]))

    def _send_ndx(self, ndx: int) -> None:
        self._send_data(int32(ndx) if self.protocol < 30 else self._ndx_out.encode(ndx))

    # --- error handling -----------------------------------------------------------------

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except RpkiRepoError as exc:
            if isinstance(exc, LocalProtocolError):
                raise
            if self.state not in (State.DONE, State.FAILED):
                self._fail(exc)
            raise

    def _fail(self, exc: RpkiRepoError) -> None:
        text = exc.detail or exc.reason.value
        if self.state in (State.GREETING, State.MODULE):
            self._send_raw(f"@ERROR: {text}\n".encode("utf-8", "replace"))
        elif self.state in (State.ARGS, State.NEGOTIATE):
            if self.protocol >= 30 and self.state is State.ARGS:
                self._send_raw(varint(0))
            self._send_raw(int32(0))
            self._muxed_out = True
            self._send_message(Msg.ERROR, f"rsync: {text}\n")
        else:
            self._send_message(Msg.ERROR, f"rsync: {text}\n")
        self._producer = None
        self._list_job = None
        self.state = transition(self.state, "fail")
        self._end(exc.reason, str(exc))

    def _end(self, reason: Reason | None, detail: str = "") -> None:
        if not self._ended:
            self._ended = True
            self._events.append(SessionEnded(reason, detail))

    # --- the machine --------------------------------------------------------------------

    def _advance(self) -> None:
        while (
            self._producer is None
            and not self._paused
            and self._list_job is None
            and self.state not in (State.DONE, State.FAILED)
        ):
            try:
                if self.state is State.GREETING:
                    self._read_greeting()
                elif self.state is State.MODULE:
                    self._read_module()
                elif self.state is State.ARGS:
                    self._read_args()
                elif self.state is State.NEGOTIATE:
                    self._read_negotiation()
                else:
                    if self._muxed_in:
                        self._demux()
                    if self.state is State.FILTERS:
                        self._read_filters()
                    elif self.state is State.TRANSFER:
                        self._read_request()
                    else:
                        self._read_goodbye()
            except NeedData:
                self._raw.rollback()
                if self._data is not self._raw:
                    self._data.rollback()
                self._ndx_in.prev_pos, self._ndx_in.prev_neg = self._ndx_mark
                if self._eof:
                    raise RemoteProtocolError(
                        Reason.RSYNC_EOF, "connection closed mid-session", state=self.state.value
                    ) from None
                return

    def _line(self, limit: int, what: str) -> bytes:
        i = self._raw.find(b"\n", limit)
        if i < 0:
            if self._raw.available() > limit:
                raise LimitExceeded(
                    Reason.RSYNC_GREETING, f"{what} too long", limit="rsync_max_greeting"
                )
            raise NeedData
        line = self._raw.take(i + 1)[:-1]
        self._raw.commit()
        return line.removesuffix(b"\r")

    def _read_greeting(self) -> None:
        line = self._line(self.limits.rsync_max_greeting, "greeting")
        m = _GREETING_RE.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(Reason.RSYNC_GREETING, "protocol startup error")
        client = int(m.group(1))
        sub = int(m.group(2) or 0)
        negotiated = _negotiate(client, sub)
        if negotiated not in SUPPORTED:
            raise RemoteProtocolError(
                Reason.RSYNC_PROTOCOL_VERSION, f"protocol version {client} not supported"
            )
        self.protocol = negotiated
        self.state = transition(self.state, "greeting")

    def _read_module(self) -> None:
        line = self._line(self.limits.rsync_max_greeting, "module line")
        if line in (b"", b"#list"):
            for name in sorted(self.catalog):
                self._send_raw(f"{name:<15}\t\n".encode())
            self._send_raw(b"@RSYNCD: EXIT\n")
            self.state = transition(self.state, "list")
            self._events.append(ModuleListed())
            self._end(None)
            return
        if _MODULE_RE.fullmatch(line) is None:
            raise RemoteProtocolError(Reason.RSYNC_MODULE_NAME, "Unknown module")
        name = line.decode("ascii")
        get = self.catalog.get(name)
        if get is None:
            raise RemoteProtocolError(Reason.RSYNC_UNKNOWN_MODULE, f"Unknown module '{name}'")
        revision = get()
        if revision is None:
            raise RemoteProtocolError(
                Reason.RSYNC_REVISION, f"module '{name}' is not available right now"
            )
        self.module, self.revision = name, revision
        self._send_raw(b"@RSYNCD: OK\n")
        self.state = transition(self.state, "module")

    def _read_args(self) -> None:
        sep = b"\x00" if self.protocol >= 30 else b"\n"
        lim = self.limits
        while True:
            room = min(lim.rsync_max_arg_length, lim.rsync_max_args_bytes - self._args_bytes)
            i = self._raw.find(sep, max(room, 0))
            if i < 0:
                if self._raw.available() > room:
                    raise LimitExceeded(
                        Reason.RSYNC_ARGUMENT,
                        "server arguments too long",
                        limit="rsync_max_args_bytes",
                    )
                raise NeedData
            arg = self._raw.take(i + 1)[:-1]
            self._raw.commit()
            if not arg:
                break
            if len(self._raw_args) >= lim.rsync_max_args:
                raise LimitExceeded(
                    Reason.RSYNC_ARGUMENT, "too many server arguments", limit="rsync_max_args"
                )
            self._args_bytes += len(arg) + 1
            self._raw_args.append(arg)
        args = parse_server_args(self._raw_args, self.protocol)
        path = args.path
        module = self.module.encode()
        if path == module:
            scope = b""
        elif path.startswith(module + b"/"):
            scope = path[len(module) + 1 :]
        else:
            raise RemoteProtocolError(Reason.RSYNC_PATH, "path outside the module")
        check_scope(scope)
        self.args = ServerArgs(
            recursive=args.recursive,
            dirs=args.dirs,
            uid=args.uid,
            gid=args.gid,
            checksum=args.checksum,
            compress=args.compress,
            compress_level=args.compress_level,
            numeric_ids=args.numeric_ids,
            checksum_seed=args.checksum_seed,
            timeout=args.timeout,
            client_info=args.client_info,
            path=scope,
            checksum_choice=args.checksum_choice,
            compress_choice=args.compress_choice,
        )
        assert self.revision is not None
        self._seed = args.checksum_seed or self.revision.seed
        if self.protocol < 30:
            self.checksum = Checksum.MD4
        else:
            if args.checksum_choice:
                self.checksum = Checksum(args.checksum_choice)
            compat = 0
            if "f" in args.client_info:
                compat |= CF_SAFE_FLIST
            if "C" in args.client_info:
                compat |= CF_CHKSUM_SEED_FIX
            if "v" in args.client_info:
                compat |= CF_VARINT_FLIST_FLAGS
            self._send_raw(varint(compat))
            if compat & CF_VARINT_FLIST_FLAGS:
                self._varint_flags = True
                # compat.c negotiate_the_strings: both sides send their lists, then read the
                # other's; the client sends its lists before it multiplexes.
                # Only what the client did not choose itself is negotiated.
                if args.open_checksum:
                    self._send_raw(vstring(" ".join(c.value for c in CHECKSUM_OFFER).encode()))
                if args.open_compressor:
                    self._send_raw(vstring(" ".join(COMPRESS_OFFER).encode()))
                if args.open_checksum or args.open_compressor:
                    self.state = transition(self.state, "negotiate")
                    return
        self._start_transfer()

    def _read_negotiation(self) -> None:
        """The client's checksum list (and compressor list with ``-z``): we take the first
        name of it that we offer (the client's own pick, see :data:`CHECKSUM_OFFER`)."""
        args = self.args
        assert args is not None
        sums, compress = args.open_checksum, args.open_compressor
        checksums = read_vstring(self._raw, MAX_NAME_LIST).split() if sums else []
        compressors = read_vstring(self._raw, MAX_NAME_LIST).split() if compress else []
        self._raw.commit()
        chosen: Checksum | None = self.checksum
        if sums:
            offer = {c.value.encode(): c for c in CHECKSUM_OFFER}
            chosen = next((offer[n] for n in checksums if n in offer), None)
        if chosen is None:
            raise RemoteProtocolError(
                Reason.RSYNC_NEGOTIATION,
                "Failed to negotiate a checksum choice (this server has xxh128 and md5)",
                offered=repr(b" ".join(checksums)[:80]),
            )
        if compress and not any(c.encode() in compressors for c in COMPRESS_OFFER):
            raise RemoteProtocolError(
                Reason.RSYNC_NEGOTIATION,
                "Failed to negotiate a compress choice (this server has zlibx and zlib)",
                offered=repr(b" ".join(compressors)[:80]),
            )
        self.checksum = chosen
        self._start_transfer()

    def _start_transfer(self) -> None:
        """The checksum seed; from here on the session is multiplexed."""
        if self.protocol >= 30:
            self._data = Buffer()
            self._premux_consumed = self._raw.consumed
            self._muxed_in = True
        self._send_raw(int32(self._seed))
        self._muxed_out = True
        self.state = transition(self.state, "args")

    def _demux(self) -> None:
        raw, lim = self._raw, self.limits
        while True:
            try:
                tag, length = frame_header(raw.i32() & 0xFFFFFFFF)
                self._frame_want = 4 + length  # read on until it is whole (length is capped)
                if tag == Msg.DATA:
                    if length > lim.rsync_max_data_frame:
                        raise LimitExceeded(
                            Reason.RSYNC_FRAME, "data frame too large", limit="rsync_max_data_frame"
                        )
                    payload = raw.take(length)
                else:
                    if length > lim.rsync_max_message_frame:
                        raise LimitExceeded(
                            Reason.RSYNC_FRAME,
                            "message frame too large",
                            limit="rsync_max_message_frame",
                        )
                    payload = raw.take(length)
            except NeedData:
                raw.rollback()
                return
            raw.commit()
            self._frame_want = 0
            if tag == Msg.DATA:
                self._data.feed(payload)
            elif tag == Msg.NOOP and length == 0:
                pass
            elif tag in (Msg.INFO, Msg.ERROR, Msg.WARNING, Msg.ERROR_XFER):
                self._events.append(ClientMessage(tag, payload.decode("utf-8", "replace")))
            elif tag == Msg.IO_ERROR and length == 4:
                pass
            elif tag == Msg.ERROR_EXIT and length in (0, 4):
                raise RemoteProtocolError(Reason.RSYNC_CLIENT_ABORT, "client aborted")
            else:
                raise RemoteProtocolError(
                    Reason.RSYNC_FRAME, "unexpected multiplexed message", tag=tag, length=length
                )

    def _read_filters(self) -> None:
        buf, lim = self._data, self.limits
        while True:
            n = buf.i32()
            if n == 0:
                buf.commit()
                break
            if n < 0 or n > lim.rsync_max_filter_rule_length:
                raise LimitExceeded(
                    Reason.RSYNC_FILTER,
                    "filter rule too long",
                    limit="rsync_max_filter_rule_length",
                )
            if len(self._rules) >= lim.rsync_max_filter_rules:
                raise LimitExceeded(
                    Reason.RSYNC_FILTER, "too many filter rules", limit="rsync_max_filter_rules"
                )
            if self._rules_bytes + n > lim.rsync_max_filter_bytes:
                raise LimitExceeded(
                    Reason.RSYNC_FILTER, "filter rules too long", limit="rsync_max_filter_bytes"
                )
            rule = buf.take(n)
            buf.commit()
            self._rules.append(rule)
            self._rules_bytes += n
        self._send_file_list()

    def _send_file_list(self) -> None:
        args, revision = self.args, self.revision
        assert args is not None and revision is not None
        filters = FilterSet.from_wire(self._rules, self.protocol)
        opts = FlistOptions(
            protocol=self.protocol,
            scope=args.path,
            recursive=args.recursive,
            dirs=args.dirs,
            uid=args.uid,
            gid=args.gid,
            checksum=args.checksum,
            filters=filters.key,
            varint_flags=self._varint_flags,
            digest=self.checksum if args.checksum else Checksum.MD5,  # -c lists only
        )
        flist = revision.cached_file_list(opts)
        if flist is None:
            if self.defer_lists:
                self._list_job = (opts, filters)  # see list_wanted
                return
            flist = revision.file_list(opts, filters, self.limits.rsync_max_filter_work)
        self._list_ready(flist)

    def _list_ready(self, flist: FileList) -> None:
        args, revision = self.args, self.revision
        assert args is not None and revision is not None
        self.flist = flist
        if flist.missing:
            shown = args.path.decode("ascii", "replace") or "."
            self._send_message(
                Msg.ERROR_XFER,
                f'rsync: [sender] link_stat "{shown}" (in {self.module}) failed: '
                "No such file or directory (2)\n",
            )
        tail = b""
        if args.uid and not args.numeric_ids:
            tail += int32(0) if self.protocol < 30 else b"\x00"
        if args.gid and not args.numeric_ids:
            tail += int32(0) if self.protocol < 30 else b"\x00"
        if self.protocol < 30:
            tail += int32(0)  # io_error
        if flist.spool_at >= 0 and revision.spool is not None and self._muxed_out:
            # The encoded list, framed, is in the revision's spool: sent from there.
            self._flush_data()
            self._out.append(SpoolRange(revision.spool.source, flist.spool_at, flist.spool_size))
            self._generated += len(flist.encoded)
            if tail:
                self._send_data(tail)
        else:
            # The encoded list is shared by every session: sent from it a frame at a time.
            self._producer = _slices(flist.encoded, tail)
        self._events.append(
            TransferStarted(
                module=self.module,
                revision=revision.name,
                protocol=self.protocol,
                files=len(flist),
                path=args.path.decode("ascii", "replace"),
                compress=args.compress,
            )
        )
        if not len(flist):
            self.state = transition(self.state, "empty-list")
            if flist.missing:
                self._end(Reason.RSYNC_NO_SUCH_PATH, "requested path does not exist")
            else:
                self._end(None)
            return
        self.state = transition(self.state, "filters")

    def _commit_data(self) -> None:
        self._data.commit()
        self._ndx_mark = (self._ndx_in.prev_pos, self._ndx_in.prev_neg)

    def _read_ndx(self) -> int:
        buf = self._data
        while True:
            ndx = buf.i32() if self.protocol < 30 else self._ndx_in.decode(buf)
            if ndx != NDX_DEL_STATS or self.protocol < 31:
                return ndx
            stats = [read_varint(buf) for _ in range(5)]
            self._commit_data()
            self._del_stats += 1
            if self._del_stats > self.limits.rsync_max_del_stats:
                raise LimitExceeded(
                    Reason.RSYNC_INDEX, "too many deletion statistics", limit="rsync_max_del_stats"
                )
            self._send_ndx(NDX_DEL_STATS)
            for v in stats:
                self._send_data(varint(v))

    def _read_request(self) -> None:
        buf = self._data
        assert self.args is not None
        batch = self.protocol >= 30 and not self.args.compress
        while self._producer is None and self.state is State.TRANSFER:
            if self._out_bytes + len(self._data_out) >= OUTPUT_HIGH_WATER:
                self._paused = True  # resumed by data_to_send once the output drained
                return
            req = self._request
            if req is None:
                if batch and self._answer_batch():
                    continue
                req = self._parse_request()
                if req is None:
                    continue
                self._request = req
            if req.skip:
                n = min(req.skip, buf.available())
                if n == 0:
                    raise NeedData
                buf.skip(n)
                self._commit_data()
                req.skip -= n
                if req.skip:
                    raise NeedData
            self._request = None
            self._answer(req)

    def _count_request(self, ndx: int) -> None:
        """Refuse a file asked for more than ``rsync_max_requests_per_file`` times.

        rsync asks for files in list order, once per phase.  A phase-0 request above every
        earlier one is a file's first, and costs no memory (``_first_last`` moves up).  Any
        other request (the redo phase, or out of order) is counted per index, and an index at
        or below ``_first_last`` counts as asked for once already (it may have been): so the
        count is never under the truth, and a session in list order never allocates the
        per-index table (``len(flist) / 8`` bytes)."""
        if self._phase == 0 and ndx > self._first_last:
            self._first_last = ndx
            return
        seen = self._seen
        if seen is None:
            assert self.flist is not None
            seen = self._seen = bytearray((len(self.flist) >> 3) + 1)
        bit = 1 << (ndx & 7)
        recorded = self._repeats.get(ndx, 1) if seen[ndx >> 3] & bit else 0
        times = (ndx <= self._first_last) + recorded + 1
        if times > self.limits.rsync_max_requests_per_file:
            raise LimitExceeded(
                Reason.RSYNC_INDEX, "file requested too often", limit="rsync_max_requests_per_file"
            )
        if recorded:
            self._repeats[ndx] = recorded + 1
        else:
            seen[ndx >> 3] |= bit

    def _check_sum_head(self, count: int, blength: int, s2len: int, remainder: int) -> int:
        """Validate a sum head; returns the bytes of block sums that follow it."""
        lim = self.limits
        max_block = (
            lim.rsync_max_block_length if self.protocol >= 30 else lim.rsync_max_block_length_27
        )
        if (
            not 0 <= count <= lim.rsync_max_sum_count
            or not 0 <= blength <= max_block
            or (count > 0 and blength == 0)
            or not 0 <= s2len <= 16
            or not 0 <= remainder <= blength
        ):
            raise RemoteProtocolError(
                Reason.RSYNC_SUM_HEAD,
                "invalid sum head",
                count=count,
                blength=blength,
                s2len=s2len,
                remainder=remainder,
            )
        skip = count * (4 + s2len)
        if self._sum_bytes + skip > lim.rsync_max_sum_bytes:
            raise LimitExceeded(
                Reason.RSYNC_SUM_HEAD, "too many block sums", limit="rsync_max_sum_bytes"
            )
        return skip

    def _parse_request(self) -> _Request | None:
        buf = self._data
        flist = self.flist
        assert flist is not None
        ndx = self._read_ndx()
        if ndx == NDX_DONE:
            self._commit_data()
            self._phase += 1
            max_phase = 2 if self.protocol >= 29 else 1
            self._send_ndx(NDX_DONE)
            if self._phase > max_phase:
                self._send_stats()
                self.state = transition(self.state, "last-done")
            return None
        if not 0 <= ndx < len(flist):
            raise RemoteProtocolError(Reason.RSYNC_INDEX, "file index out of range", ndx=ndx)
        if self.protocol >= 30:
            iflags = buf.u16()
            basis = buf.u8() if iflags & ITEM_BASIS_TYPE_FOLLOWS else None
            xname = read_vstring(buf, MAX_XNAME) if iflags & ITEM_XNAME_FOLLOWS else None
        else:
            iflags, basis, xname = ITEM_TRANSFER, None, None
        head = None
        skip = 0
        if iflags & ITEM_TRANSFER:
            if flist.is_dir(ndx):
                raise RemoteProtocolError(Reason.RSYNC_INDEX, "transfer of a directory", ndx=ndx)
            if self._phase >= 2:
                raise RemoteProtocolError(Reason.RSYNC_SEQUENCE, "transfer after the last phase")
            head = buf.i32x4()
            skip = self._check_sum_head(*head)
            self._count_request(ndx)
            self._sum_bytes += skip
        self._commit_data()
        return _Request(ndx, iflags, basis, xname, head, skip)

    def _answer_batch(self) -> bool:
        """Answer, in one go, the plain protocol >= 30 requests at the head of the input (see
        the module docstring); returns whether any was.  Anything this does not handle is left
        in the buffer for :meth:`_parse_request`, which also raises the errors."""
        buf, flist, revision = self._data, self.flist, self.revision
        assert flist is not None and revision is not None
        avail = buf.available()
        if avail < 3:
            return False
        data = buf.take(min(avail, BATCH_INPUT))
        buf.rollback()  # a request boundary: nothing is taken until the end of the batch
        end = len(data)
        ids, fdirs, count = flist.ids, flist.dirs, len(flist)
        names, ends, sizes, tails = revision.names, revision.ends, revision.sizes, revision.tails
        read = revision.source.read
        # The spool's answers end with its checksum; MD5 answers end with the revision's.
        spool = revision.spool if self.checksum is SPOOL_CHECKSUM else None
        md5_tails = self.checksum is Checksum.MD5
        rdirs = revision.dirs
        run_end = run_ndx = run_used = run_pos = -1
        lim = self.limits
        max_block, max_sums = lim.rsync_max_block_length, lim.rsync_max_sum_bytes
        max_count = lim.rsync_max_sum_count
        # Transfers here are phase-0 firsts only (see _count_request); others take the
        # general path, which counts them.
        transfers_ok = self._phase == 0
        first_last = self._first_last
        writer = self._ndx_out
        prev_in, prev_out = self._ndx_in.prev_pos, writer.prev_pos
        room = OUTPUT_HIGH_WATER - self._out_bytes - len(self._data_out)
        parts: list[bytes] = []
        produced = 0
        done = 0
        files = 0
        while produced < room:
            p = done
            if p + 3 > end:
                break
            b = data[p]
            if b == 0xFE:
                hi = data[p + 1]
                if hi & 0x80:
                    if p + 7 > end:
                        break
                    ndx = (hi & 0x7F) << 24 | data[p + 2] | data[p + 3] << 8 | data[p + 4] << 16
                    p += 5
                else:
                    if p + 5 > end:
                        break
                    ndx = prev_in + (hi << 8 | data[p + 2])
                    p += 3
            elif b == 0 or b == 0xFF:
                break  # end of phase, deletion statistics
            else:
                ndx = prev_in + b
                p += 1
            if ndx >= count:
                break
            iflags = data[p] | data[p + 1] << 8
            if iflags & (ITEM_BASIS_TYPE_FOLLOWS | ITEM_XNAME_FOLLOWS):
                break
            q = p + 2
            if iflags & ITEM_TRANSFER:
                q += 16
                if q > end or fdirs[ndx] or not transfers_ok:
                    break
                blocks, blength, s2len, remainder = _I32X4.unpack_from(data, p + 2)
                if blocks or blength or s2len or remainder:
                    if not (
                        0 <= blocks <= max_count
                        and 0 <= blength <= max_block
                        and (blocks == 0 or blength > 0)
                        and 0 <= s2len <= 16
                        and 0 <= remainder <= blength
                    ):
                        break  # refused on the general path
                    skip = blocks * (4 + s2len)
                    if q + skip > end or self._sum_bytes + skip > max_sums:
                        break
                else:
                    skip = 0
                if ndx <= first_last:
                    break  # out of order: counted on the general path
                pos = ids[ndx]
                size = sizes[pos]
                if size > SMALL_BODY_MAX:
                    break
                first_last = ndx
                self._sum_bytes += skip
                diff = ndx - prev_out
                ndx_out = _BYTE[diff] if 0 < diff < 0xFE else writer.encode(ndx)
                if spool is not None and skip == 0 and prev_in == prev_out and run_end < 0:
                    # The requests after this one may be a full sync's run, answered from
                    # the spool as it is (see :func:`_run_end`).
                    pos_end, used = _run_end(rdirs, spool, data, q, end, pos)
                    ndx_end = ndx + pos_end - pos
                    if pos_end > pos and (ndx_end >= count or ids[ndx_end] != pos_end):
                        pos_end = pos
                    if pos_end > pos:
                        run_end, run_ndx, run_used, run_pos = pos_end, ndx_end, used, pos
                body = read(names[ends[pos - 1] : ends[pos]], 0, size, size)
                if size <= LITERAL_CHUNK:
                    # ndx, echo of flags and sum head, one literal run, end + MD5.
                    parts.append(
                        ndx_out + data[p:q] + _I32.pack(size) if size else ndx_out + data[p:q]
                    )
                    parts.append(body)
                else:
                    parts.append(ndx_out + data[p:q])
                    for off in range(0, size, LITERAL_CHUNK):
                        piece = body[off : off + LITERAL_CHUNK]
                        parts.append(_I32.pack(len(piece)))
                        parts.append(piece)
                parts.append(
                    tails[20 * pos : 20 * pos + 20] if md5_tails else _ZERO4 + xxh128(body)
                )
                produced += size + 40
                files += 1
                q += skip
            else:
                diff = ndx - prev_out
                parts.append(_BYTE[diff] if 0 < diff < 0xFE else writer.encode(ndx))
                parts.append(data[p:q])
            writer.prev_pos = prev_out = ndx
            prev_in = ndx
            done = q
            if run_end >= 0:
                break
        if not done:
            return False
        if run_end >= 0:
            # The rest of the run: the spool's segments, sent as they are.
            assert spool is not None
            done += run_used
            files += run_end - run_pos - rdirs.count(1, run_pos + 1, run_end + 1)
            writer.prev_pos = prev_in = first_last = run_ndx
        self._first_last = first_last
        buf.skip(done)
        self._ndx_in.prev_pos = prev_in
        self._commit_data()
        self.files_sent += files
        self._send_pieces(parts)
        if run_end >= 0:
            assert spool is not None
            self._send_stream(spool, spool.offsets[run_pos + 1], spool.offsets[run_end + 1])
        return True

    def _send_stream(self, spool: SpoolIndex, start: int, stop: int) -> None:
        """Send bytes ``start`` to ``stop`` of the spool's answer stream: its whole frames in
        between as a :class:`SpoolRange`, the parts of frames before and after them as data
        (they join the frames around them, so the client sees frames of the usual size)."""
        total, source = spool.total, spool.source
        first = -(-start // SPOOL_FRAME)  # the first whole frame
        end = stop // SPOOL_FRAME if stop < total else -(-total // SPOOL_FRAME)  # one past the last
        if end <= first:
            self._send_data(_stream_bytes(source, start, stop))
            return
        whole_start, whole_stop = first * SPOOL_FRAME, min(end * SPOOL_FRAME, total)
        if start < whole_start:
            self._send_data(_stream_bytes(source, start, whole_start))
        self._flush_data()
        at = spool_file_offset(whole_start) - 4
        count = spool_file_offset(whole_stop - 1) + 1 - at
        self._out.append(SpoolRange(source, at, count))
        self._generated += whole_stop - whole_start
        if whole_stop < stop:
            self._send_data(_stream_bytes(source, whole_stop, stop))

    def _answer(self, req: _Request) -> None:
        flist, revision, args = self.flist, self.revision, self.args
        assert flist is not None and revision is not None and args is not None
        head = bytearray(int32(req.ndx) if self.protocol < 30 else self._ndx_out.encode(req.ndx))
        if self.protocol >= 30:
            head += bytes([req.iflags & 0xFF, req.iflags >> 8])
            if req.basis is not None:
                head.append(req.basis)
            if req.xname is not None:
                n = len(req.xname)
                head += bytes([n]) if n < 0x80 else bytes([0x80 | n >> 8, n & 0xFF])
                head += req.xname
        if req.head is None:
            self._send_data(head)
            return
        head += _I32X4.pack(*req.head)
        pos = flist.ids[req.ndx]
        size = revision.sizes[pos]
        level = args.compress_level if args.compress else 0
        self.files_sent += 1
        if size <= SMALL_BODY_MAX:
            self._send_data(head + revision.response_body(pos, self.checksum, level, self._seed))
            return
        # A large file: produced lazily, one frame at a time.
        self._send_data(head)
        if level:
            self._producer = _slices(
                *revision.response_parts(pos, self.checksum, level, self._seed)
            )
        elif self.checksum is Checksum.XXH128:
            self._producer = _read_literal(revision, pos, None)
        else:
            self._producer = _read_literal(
                revision, pos, revision.transfer_sum(pos, self.checksum, self._seed)
            )

    def _send_stats(self) -> None:
        flist = self.flist
        assert flist is not None
        total_size = flist.total_size
        # What rsync's report() sends: bytes read and written so far.  Counted as parsed and
        # as produced, without multiplex headers, so the values do not depend on how the I/O
        # layer split the stream (the client only prints them).
        if self._data is self._raw:
            read = self._raw.consumed
        else:
            read = self._premux_consumed + self._data.consumed
        values = (read, self._generated, total_size)
        if self.protocol < 30:
            for v in values:
                self._send_data(longint(v))
        else:
            for v in (*values, 0, 0):
                self._send_data(varlong(v, 3))

    def _read_goodbye(self) -> None:
        ndx = self._read_ndx()
        self._commit_data()
        if ndx != NDX_DONE:
            raise RemoteProtocolError(Reason.RSYNC_SEQUENCE, "invalid packet at end of run")
        if self.state is State.GOODBYE and self.protocol >= 31:
            self._send_ndx(NDX_DONE)
            self.state = transition(self.state, "goodbye-31")
            return
        self.state = transition(self.state, "goodbye")
        self._flush_data()
        self._end(None)


#: A full sync's request for the position after the previous one, by directory flag.
_FULL_SYNC_REQUEST: Final = (b"\x01" + NEW_FILE_REQUEST, b"\x01" + NEW_DIR_REQUEST)


def _run_end(
    dirs: bytes, spool: SpoolIndex, data: bytes, at: int, end: int, pos: int
) -> tuple[int, int]:
    """The run of full-sync requests in ``data[at:end]`` that follows the request for the file
    at ``pos``: the requests for the positions after it, one after the other (index delta 1),
    each a :data:`NEW_FILE_REQUEST` or :data:`NEW_DIR_REQUEST`, whose answers take at most
    :data:`SPOOL_RANGE_MAX` bytes.  Their answers are the spool's segments of those positions,
    byte for byte.  Returns the last position of the run (``pos``: none) and the bytes of
    requests it covers."""
    offsets = spool.offsets
    last = len(offsets) - 2
    k = bisect_right(offsets, offsets[pos + 1] + SPOOL_RANGE_MAX, pos + 1, last + 2) - pos - 2
    avail = end - at
    file_request, dir_request = _FULL_SYNC_REQUEST

    def length(m: int) -> int:  # of the requests for the m positions after pos
        dirs_in = dirs.count(1, pos + 1, pos + 1 + m)
        return len(file_request) * (m - dirs_in) + len(dir_request) * dirs_in

    if k > 0 and length(k) > avail:
        lo, hi = 0, k  # length(lo) <= avail < length(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if length(mid) <= avail:
                lo = mid
            else:
                hi = mid
        k = lo
    if k <= 0:
        return pos, 0
    want = b"".join(map(_FULL_SYNC_REQUEST.__getitem__, dirs[pos + 1 : pos + 1 + k]))
    if not data.startswith(want, at):
        view = memoryview(want)
        lo, hi = 0, k  # the longest run that matches: lo does, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if data.startswith(view[: length(mid)], at):
                lo = mid
            else:
                hi = mid
        k = lo
    return pos + k, length(k)


def _stream_bytes(source: SpoolSource, start: int, stop: int) -> bytes:
    """Bytes ``start`` to ``stop`` of a spool's answer stream, its frame headers left out."""
    parts = []
    while start < stop:
        end = min(stop, (start // SPOOL_FRAME + 1) * SPOOL_FRAME)
        parts.append(source.read(spool_file_offset(start), end - start))
        start = end
    return b"".join(parts)


def _slices(data: bytes, tail: bytes) -> Iterator[bytes | memoryview]:
    """``data`` a frame's worth at a time (views: shared bytes are never copied whole), then
    ``tail``."""
    view = memoryview(data)
    for off in range(0, len(data), MAX_DATA_FRAME_OUT):
        yield view[off : off + MAX_DATA_FRAME_OUT]
    if tail:
        yield tail


def _read_literal(revision: Revision, pos: int, checksum: bytes | None) -> Iterator[bytes]:
    """A large file's literal token stream, read a chunk at a time as the output drains, then
    its checksum (``None``: its XXH128, computed from the chunks as they go)."""
    path, size = revision.path(pos), revision.sizes[pos]
    hasher = xxhash.xxh3_128() if checksum is None else None
    for off in range(0, size, LITERAL_CHUNK):
        n = min(LITERAL_CHUNK, size - off)
        chunk = revision.source.read(path, off, n, size)
        if hasher is not None:
            hasher.update(chunk)
        yield _I32.pack(n) + chunk
    yield _ZERO4
    if hasher is not None:
        checksum = xxh128_bytes(hasher.intdigest())
    assert checksum is not None
    yield checksum
