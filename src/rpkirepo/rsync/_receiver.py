"""One rsync client session (the receiving side of a daemon pull), sans-I/O.

Theory of operation.  The I/O layer (``client.py``) creates a :class:`Receiver` for one module
directory, sends whatever :meth:`Receiver.data_to_send` returns, feeds every byte it reads to
:meth:`Receiver.receive_data` (``b""`` at end of file) and takes events from
:meth:`Receiver.next_event` until it returns :data:`NEED_DATA` (read more) or the session is
:attr:`~Receiver.finished`.  No sockets, files or clocks here: deciding what to fetch, writing
files and timing out are the adapter's jobs.  The session walks what rsync's client does for
``rsync -rt rsync://host/module/path/ dest/`` (rsync-wire.md §3-§5; rsync clientserver.c
``start_inband_exchange``, main.c ``client_run``/``do_recv``, flist.c ``recv_file_list``,
generator.c ``generate_files``, receiver.c ``recv_files``, token.c, io.c):

1. our greeting and the module line go out at once; the server's greeting fixes the protocol
   (27, 30 or 31); MOTD lines are skipped until ``@RSYNCD: OK`` (``@ERROR`` ends the session);
2. server arguments ``--server --sender -tr[z]e.LsfxC . module/path/``: no incremental
   recursion (no ``i``), no varint flags or checksum negotiation (no ``v``), so the server sends
   MD5 sums at >= 30 and plain zlib with ``-z``;
3. compat flags (>= 30) and the checksum seed; from here every server byte is multiplexed, and
   ours are too at >= 30.  Our filter rules follow (possibly none);
4. the file list: every entry's name is checked as it arrives (:func:`check_name`: relative,
   printable ASCII without backslash, no empty/``.``/``..`` part, component, path and depth
   limits, no duplicates), so nothing unsafe ever reaches the adapter.  The list is then sorted
   as the sender sorts it (a request is an index into the sorted list) and every entry's parent
   must be a listed directory.  :class:`FileListReceived` carries it; the adapter answers with
   :meth:`Receiver.request` (the indices of the regular files it wants);
5. requests go out pipelined, a window at a time, each with an empty sum head (whole file,
   never block matching), then the end-of-phase markers as the server echoes them;
6. each answer is a literal (or, with ``-z``, deflated) token stream and the whole-file sum:
   MD5(data) at >= 30, MD4(seed || data) at 27.  A file is handed out (:class:`FileReceived`)
   only after its length and checksum were checked, so nothing unverified is ever written;
7. statistics, goodbye (twice at 31), done.

Hostile servers: every length is checked before anything is buffered for it (names, message
frames; data frames are streamed, not buffered whole); a file may not be longer than listed, nor
answered twice or unrequested, the sum head must be the empty one we sent, match tokens are
refused, the deflate stream is inflated with an output cap.  Server messages (INFO, WARNING,
ERROR ...) become :class:`ServerMessage` events (truncated); an error message or an I/O error flag
makes the session fail with ``rsync-client-server-error`` carrying the server's text.  Only
:class:`~rpkirepo.errors.RpkiRepoError` subclasses leave this module.

Non-goals: authentication (``@RSYNCD: AUTHREQD`` is refused), symlinks, devices and specials
(listed, never created: the adapter counts them as skipped), hard links, ``--delete``
(the caller's ``dest`` starts empty), re-requesting a file whose checksum failed (the whole fetch
fails instead; rsync's redo phase stays empty).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, NamedTuple

from rpkirepo.errors import (
    IntegrityError,
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync._md4 import md4
from rpkirepo.rsync._wire import (
    NDX_DONE,
    Buffer,
    Msg,
    NdxReader,
    NdxWriter,
    NeedData,
    frame,
    frame_header,
    int32,
    read_varint,
    read_varlong,
    read_vstring,
)

__all__ = [
    "NEED_DATA",
    "SUPPORTED_PROTOCOLS",
    "EntryKind",
    "Event",
    "FileListReceived",
    "FileReceived",
    "ListEntry",
    "Receiver",
    "ServerMessage",
    "SessionDone",
    "check_name",
    "include_rules",
]

SUPPORTED_PROTOCOLS: Final = frozenset({27, 30, 31})
MAX_REMOTE_PROTOCOL: Final = 40  # rsync's MAX_PROTOCOL_VERSION: above it, refuse
#: Requests in flight: enough to keep a long, fat pipe busy, few enough to bound our output.
REQUEST_WINDOW: Final = 2048
MAX_DATA_FRAME_OUT: Final = 32768
#: Text kept from one server message, and how many messages become events (the rest are counted).
MESSAGE_TEXT_MAX: Final = 512
MESSAGE_EVENTS_MAX: Final = 200
SUM_LENGTH: Final = 16
MAX_MTIME: Final = 1 << 37  # refuse absurd times (os.utime would fail on them)
CLIENT_INFO: Final = "LsfxC"

# rsync.h XMIT_* (flist flags), ITEM_* (request flags), CF_* (compat flags), S_IF* (modes).
XMIT_TOP_DIR: Final = 0x01
XMIT_SAME_MODE: Final = 0x02
XMIT_EXTENDED_FLAGS: Final = 0x04
XMIT_SAME_NAME: Final = 0x20
XMIT_LONG_NAME: Final = 0x40
XMIT_SAME_TIME: Final = 0x80
XMIT_IO_ERROR_ENDLIST: Final = 0x1000
XMIT_MOD_NSEC: Final = 0x2000
ITEM_BASIS_TYPE_FOLLOWS: Final = 1 << 11
ITEM_XNAME_FOLLOWS: Final = 1 << 12
ITEM_IS_NEW: Final = 1 << 13
ITEM_TRANSFER: Final = 1 << 15
CF_INC_RECURSE: Final = 0x01
CF_SAFE_FLIST: Final = 0x08
CF_VARINT_FLIST_FLAGS: Final = 0x80
CF_KNOWN: Final = 0x1FF
S_IFMT: Final = 0o170000
S_IFREG: Final = 0o100000
S_IFDIR: Final = 0o040000
_OTHER_TYPES: Final = frozenset({0o120000, 0o020000, 0o060000, 0o010000, 0o140000})
DEFLATED_DATA: Final = 0x40

_GREETING_RE: Final = re.compile(rb"@RSYNCD: (\d{1,9})(?:\.(-?\d{1,9}))?(?: [ -~]*)?")
_NAME_CHARS: Final = re.compile(rb"[\x20-\x5b\x5d-\x7e]+")
_MODULE_RE: Final = re.compile(r"[!-.0-~]{1,255}")  # printable ASCII, no "/" or space
_PATH_RE: Final = re.compile(r"[\x21-\x7e]{0,4000}")
_REQUEST_IFLAGS: Final = ITEM_TRANSFER | ITEM_IS_NEW
_REQUEST_TAIL_30: Final = bytes([_REQUEST_IFLAGS & 0xFF, _REQUEST_IFLAGS >> 8])
_EMPTY_SUM_HEAD: Final = b"\x00" * 16


# --- events -------------------------------------------------------------------------------


class _Sentinel(Enum):
    NEED_DATA = "need-data"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""Returned by :meth:`Receiver.next_event` when more bytes from the server are needed."""


class EntryKind(IntEnum):
    FILE = 0
    DIR = 1
    OTHER = 2  # symlink, device, fifo, socket: never created


class ListEntry(NamedTuple):
    """One file-list entry, in index order.  ``name`` is validated (see :func:`check_name`);
    the transfer root itself is the directory ``"."``."""

    name: str
    kind: EntryKind
    size: int
    mtime: int


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """A message the server multiplexed to us (``tag`` is a :class:`Msg` value); text
    truncated to :data:`MESSAGE_TEXT_MAX` characters."""

    tag: int
    text: str


@dataclass(frozen=True, slots=True)
class FileListReceived:
    """The whole, validated, sorted file list: answer with :meth:`Receiver.request`."""

    entries: tuple[ListEntry, ...]
    protocol: int


@dataclass(frozen=True, slots=True)
class FileReceived:
    """A requested file's whole content, length and checksum verified."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionDone:
    """The goodbye was exchanged; the adapter may close once :meth:`data_to_send` is empty."""

    files_received: int


Event = ServerMessage | FileListReceived | FileReceived | SessionDone


# --- names --------------------------------------------------------------------------------


def check_name(name: bytes, limits: Limits, is_dir: bool) -> str:
    """Raise ``rsync-client-bad-name`` unless ``name`` is safe to create below the destination
    (rsync-wire.md §8 "output safety"); return it as text."""
    if len(name) > limits.rsync_client_max_path_length:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_BAD_NAME, "file name too long", name=repr(name[:64])
        )
    if _NAME_CHARS.fullmatch(name) is None:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_BAD_NAME,
            "empty name, or control, non-ASCII or backslash characters in it",
            name=repr(name[:64]),
        )
    parts = name.split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_BAD_NAME,
                "absolute name, or an empty, '.' or '..' component",
                name=repr(name[:64]),
            )
        if len(part) > limits.rsync_client_max_component_length:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_BAD_NAME, "name component too long", name=repr(name[:64])
            )
    depth = len(parts) if is_dir else len(parts) - 1
    if depth > limits.rsync_client_max_depth:
        raise RemoteProtocolError(
            Reason.RSYNC_CLIENT_BAD_NAME, "directories nested too deeply", name=repr(name[:64])
        )
    return name.decode("ascii")


def _sort_key_29(entry: ListEntry) -> tuple[tuple[int, str], ...]:
    # flist.c f_name_cmp at protocol >= 29: per directory, files before subdirectories, and a
    # directory compares as its name plus '/'.  The transfer root "." sorts first.
    name = entry.name
    if name == ".":
        return ()
    parts = name.split("/")
    key = [(1, p + "/") for p in parts[:-1]]
    key.append((1, parts[-1] + "/") if entry.kind is EntryKind.DIR else (0, parts[-1]))
    return tuple(key)


def _sort_key_27(entry: ListEntry) -> str:
    return entry.name  # bytewise on the whole path (ASCII: str order is byte order)


# --- the session --------------------------------------------------------------------------


class _State(Enum):
    GREETING = "greeting"
    WAIT_OK = "wait-ok"
    SETUP = "setup"
    FLIST = "flist"
    IO_ERROR = "io-error"  # protocol 27: the int32 after the list
    PLAN = "plan"  # waiting for request()
    TRANSFER = "transfer"
    STATS = "stats"
    GOODBYE = "goodbye"  # protocol 31: the server's answer to our goodbye
    DONE = "done"
    FAILED = "failed"


_TRANSITIONS: Final[dict[_State, frozenset[_State]]] = {
    _State.GREETING: frozenset({_State.WAIT_OK}),
    _State.WAIT_OK: frozenset({_State.SETUP}),
    _State.SETUP: frozenset({_State.FLIST}),
    _State.FLIST: frozenset({_State.IO_ERROR, _State.PLAN, _State.DONE}),
    _State.IO_ERROR: frozenset({_State.PLAN, _State.DONE}),
    _State.PLAN: frozenset({_State.TRANSFER}),
    _State.TRANSFER: frozenset({_State.STATS}),
    _State.STATS: frozenset({_State.GOODBYE, _State.DONE}),
    _State.GOODBYE: frozenset({_State.DONE}),
    _State.DONE: frozenset(),
    _State.FAILED: frozenset(),
}


@dataclass(slots=True)
class _Incoming:
    """The file whose token stream is being read."""

    index: int
    size: int
    chunks: list[bytes]
    got: int = 0
    literal_left: int = 0
    inflater: zlib._Decompress | None = None


def _server_text(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MESSAGE_TEXT_MAX]


class Receiver:
    """See the module docstring.  ``path`` is the directory below the module ('' for the
    module itself); ``filter_rules`` are sent as they are (see :func:`include_rules`);
    ``md4_digest`` computes MD4 for protocol 27 (the I/O layer may pass a faster one)."""

    def __init__(
        self,
        module: str,
        path: str = "",
        *,
        protocol: int = 31,
        compress: bool = False,
        filter_rules: Iterable[bytes] = (),
        limits: Limits = DEFAULT_LIMITS,
        md4_digest: Callable[[bytes], bytes] = md4,
    ) -> None:
        if protocol not in SUPPORTED_PROTOCOLS:
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "protocol must be 27, 30 or 31", protocol=protocol
            )
        if _MODULE_RE.fullmatch(module) is None or _PATH_RE.fullmatch(path) is None:
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "bad module name or path", module=module[:64]
            )
        self.limits = limits
        self._md4 = md4_digest
        self.module = module
        self.path = path.strip("/")
        self.compress = compress
        self.wanted_protocol = protocol
        self.protocol = 0
        self.seed = 0
        self.compat = 0
        self.io_error = 0
        self.bytes_received = 0
        self.files_received = 0
        self.entries: tuple[ListEntry, ...] = ()
        self._rules = tuple(filter_rules)
        self._state = _State.GREETING
        self._raw = Buffer()
        self._data = Buffer()
        self._muxed = False
        self._frame_left = 0
        self._eof = False
        self._error: RpkiRepoError | None = None
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._out_data = bytearray()  # payload waiting for a MSG_DATA frame (>= 30)
        self._handshake_bytes = 0
        self._first_error = ""
        self._messages = 0
        self._ndx_in = NdxReader()
        self._ndx_out = NdxWriter()
        self._ndx_mark = (-1, 1)
        # file list
        self._flist: list[ListEntry] = []
        self._names: set[str] = set()
        self._last_name = b""
        self._last_mode = 0
        self._last_mtime = 0
        # transfer
        self._queue: deque[int] = deque()
        self._outstanding: set[int] = set()
        self._requested = False
        self._client_dones = 0
        self._server_dones = 0
        self._incoming: _Incoming | None = None
        self._bytes_data = 0
        self._emit_done = False
        self._send_raw(f"@RSYNCD: {protocol}.0\n{module}\n".encode("ascii"))

    # --- public API ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def finished(self) -> bool:
        """The session ended cleanly and everything queued was handed out."""
        return self._state is _State.DONE and not self._out and not self._out_data

    @property
    def max_phase(self) -> int:
        return 2 if self.protocol >= 29 else 1

    def receive_data(self, data: bytes) -> None:
        """Store bytes read from the server (``b""``: end of file); parsing happens in
        :meth:`next_event`."""
        if data:
            self.bytes_received += len(data)
            self._raw.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """The next event, or :data:`NEED_DATA`.  Raises the session's error (again) once it
        failed."""
        if self._error is not None:
            raise self._error
        if not self._events:
            try:
                self._advance()
            except RpkiRepoError as exc:
                raise self._fail(exc) from None
            except (ValueError, OverflowError, zlib.error, UnicodeError) as exc:
                raise self._fail(
                    RemoteProtocolError(Reason.RSYNC_CLIENT_PROTOCOL, str(exc))
                ) from None
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def request(self, indices: Iterable[int]) -> None:
        """Ask for the regular files at ``indices`` of the file list (each at most once), then
        end the phases.  Call once, after :class:`FileListReceived`."""
        if self._state is _State.DONE and not self.entries:
            return
        if self._state is not _State.PLAN or self._requested:
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL, "request() outside the planning state"
            )
        entries = self.entries
        seen: set[int] = set()
        total = 0
        for i in indices:
            if not 0 <= i < len(entries) or entries[i].kind is not EntryKind.FILE or i in seen:
                raise LocalProtocolError(
                    Reason.RSYNC_CLIENT_PROTOCOL, "not a listed regular file", index=i
                )
            seen.add(i)
            total += entries[i].size
            self._queue.append(i)
        if total > self.limits.rsync_client_max_bytes:
            raise LimitExceeded(
                Reason.LIMIT,
                "the files to fetch exceed the byte limit",
                limit="rsync_client_max_bytes",
                bytes=total,
            )
        self._requested = True
        self._goto(_State.TRANSFER)

    def data_to_send(self) -> bytes:
        """Bytes for the server (``b""`` when nothing is due); requests are produced here, a
        window at a time."""
        if self._state is _State.TRANSFER:
            self._make_requests()
        self._flush_data()
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- output -------------------------------------------------------------------------

    def _send_raw(self, data: bytes) -> None:
        self._out += data

    def _send_data(self, data: bytes) -> None:
        """Bytes of the (multiplexed at >= 30) data stream to the server."""
        if self.protocol < 30:
            self._out += data
        else:
            self._out_data += data

    def _flush_data(self) -> None:
        buf = self._out_data
        while buf:
            self._out += frame(Msg.DATA, buf[:MAX_DATA_FRAME_OUT])
            del buf[:MAX_DATA_FRAME_OUT]

    def _send_ndx(self, ndx: int) -> None:
        self._send_data(int32(ndx) if self.protocol < 30 else self._ndx_out.encode(ndx))

    def _make_requests(self) -> None:
        queue = self._queue
        if queue:
            room = REQUEST_WINDOW - len(self._outstanding)
            if room <= 0:
                return
            out = bytearray()
            modern = self.protocol >= 30
            encode = self._ndx_out.encode
            outstanding = self._outstanding
            while queue and room > 0:
                i = queue.popleft()
                outstanding.add(i)
                room -= 1
                if modern:
                    out += encode(i)
                    out += _REQUEST_TAIL_30
                else:
                    out += int32(i)
                out += _EMPTY_SUM_HEAD
            self._send_data(bytes(out))
        if not queue and self._client_dones == 0:
            self._client_dones = 1
            self._send_ndx(NDX_DONE)  # generator.c: end of phase 0 (nothing to redo)

    # --- errors and state ---------------------------------------------------------------

    def _goto(self, state: _State) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise LocalProtocolError(
                Reason.RSYNC_CLIENT_PROTOCOL,
                "illegal receiver transition",
                state=self._state.value,
                to=state.value,
            )
        self._state = state

    def _fail(self, exc: RpkiRepoError) -> RpkiRepoError:
        if isinstance(exc, RemoteProtocolError):
            if not exc.reason.value.startswith("rsync-client-"):
                # A codec of _wire (shared with the daemon) refused something.
                exc = RemoteProtocolError(Reason.RSYNC_CLIENT_PROTOCOL, exc.detail)
            if exc.reason is Reason.RSYNC_CLIENT_PROTOCOL and self._first_error:
                # Whatever broke, the server told us why first: that is the useful message.
                exc = RemoteProtocolError(
                    Reason.RSYNC_CLIENT_SERVER_ERROR, self._first_error, during=exc.detail
                )
        self._error = exc
        self._state = _State.FAILED
        return exc

    def _protocol_error(self, detail: str, **context: str | int | None) -> RemoteProtocolError:
        return RemoteProtocolError(Reason.RSYNC_CLIENT_PROTOCOL, detail, **context)

    # --- the machine --------------------------------------------------------------------

    def _advance(self) -> None:
        while not self._events and self._state not in (_State.DONE, _State.FAILED):
            state = self._state
            try:
                if state is _State.GREETING:
                    self._read_greeting()
                elif state is _State.WAIT_OK:
                    self._read_ok()
                elif state is _State.SETUP:
                    self._read_setup()
                else:
                    self._demux()
                    if state is _State.FLIST:
                        self._read_flist()
                    elif state is _State.IO_ERROR:
                        self.io_error |= self._data.i32()
                        self._data.commit()
                        self._finish_flist()
                    elif state is _State.PLAN:
                        return
                    elif state is _State.TRANSFER:
                        self._read_transfer()
                    elif state is _State.STATS:
                        self._read_stats()
                    else:
                        self._read_goodbye()
            except NeedData:
                self._raw.rollback()
                self._data.rollback()
                self._ndx_in.prev_pos, self._ndx_in.prev_neg = self._ndx_mark
                if self._eof:
                    if self._state is _State.PLAN:
                        return
                    raise self._protocol_error(
                        "connection closed by the server", state=self._state.value
                    ) from None
                return
        if self._emit_done:
            self._emit_done = False
            self._events.append(SessionDone(self.files_received))

    def _line(self) -> bytes:
        limit = self.limits.rsync_client_max_message_frame
        i = self._raw.find(b"\n", limit)
        if i < 0:
            if self._raw.available() > limit:
                raise LimitExceeded(
                    Reason.LIMIT,
                    "server line too long",
                    limit="rsync_client_max_message_frame",
                )
            raise NeedData
        line = self._raw.take(i + 1)[:-1]
        self._raw.commit()
        self._handshake_bytes += i + 1
        if self._handshake_bytes > limit:
            raise LimitExceeded(
                Reason.LIMIT,
                "server sent too much before the transfer",
                limit="rsync_client_max_message_frame",
            )
        return line.removesuffix(b"\r")

    def _read_greeting(self) -> None:
        line = self._line()
        if line.startswith(b"@ERROR"):
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_SERVER_ERROR, _server_text(line[6:].lstrip(b": "))
            )
        m = _GREETING_RE.fullmatch(line)
        if m is None:
            raise self._protocol_error("not an rsync daemon greeting", line=repr(line[:64]))
        remote = int(m.group(1))
        sub = int(m.group(2)) if m.group(2) is not None else None
        if sub is None and remote >= 30:
            raise self._protocol_error("server greeting without a sub-protocol", remote=remote)
        # clientserver.c exchange_protocols, as the client with sub-protocol 0.
        ours = self.wanted_protocol
        if ours > remote:
            negotiated = remote - 1 if sub else remote
        elif ours == remote and sub:
            negotiated = ours - 1
        else:
            negotiated = ours
        if remote > MAX_REMOTE_PROTOCOL or negotiated not in SUPPORTED_PROTOCOLS:
            raise self._protocol_error(
                "server protocol version not supported", remote=remote, negotiated=negotiated
            )
        self.protocol = negotiated
        self._goto(_State.WAIT_OK)

    def _read_ok(self) -> None:
        while True:
            line = self._line()
            if line == b"@RSYNCD: OK":
                break
            if line.startswith(b"@ERROR"):
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_SERVER_ERROR, _server_text(line[6:].lstrip(b": "))
                )
            if line.startswith(b"@RSYNCD: AUTHREQD"):
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_SERVER_ERROR, "module requires authentication"
                )
            if line.startswith(b"@RSYNCD: EXIT"):
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_SERVER_ERROR, "server ended the session"
                )
            # anything else is a MOTD line: skipped (--no-motd)
        modern = self.protocol >= 30
        flags = "trze." if self.compress else "tre."
        target = f"{self.module}/{self.path}/" if self.path else f"{self.module}/"
        args = ["--server", "--sender", f"-{flags}{CLIENT_INFO}", ".", target]
        sep = "\0" if modern else "\n"
        self._send_raw(("".join(a + sep for a in args) + sep).encode("ascii"))
        # exclude.c send_filter_list: int32 length + rule, then int32 0.
        rules = bytearray()
        for rule in self._rules:
            rules += int32(len(rule)) + rule
        rules += int32(0)
        if modern:
            self._send_raw(frame(Msg.DATA, rules))
        else:
            self._send_raw(bytes(rules))
        self._goto(_State.SETUP)

    def _read_setup(self) -> None:
        raw = self._raw
        if self.protocol >= 30:
            compat = read_varint(raw)
            if (
                compat < 0
                or compat & ~CF_KNOWN
                or compat & (CF_INC_RECURSE | CF_VARINT_FLIST_FLAGS)
            ):
                raise self._protocol_error("unexpected compat flags", compat=compat)
            self.compat = compat
        self.seed = raw.i32()
        raw.commit()
        self._muxed = True
        self._goto(_State.FLIST)

    def _demux(self) -> None:
        raw, data = self._raw, self._data
        limit = self.limits.rsync_client_max_message_frame
        while True:
            if self._frame_left:
                n = min(self._frame_left, raw.available())
                if n == 0:
                    return
                data.feed(raw.take(n))
                raw.commit()
                self._frame_left -= n
                continue
            try:
                tag, length = frame_header(raw.i32() & 0xFFFFFFFF)
                if tag == Msg.DATA:
                    raw.commit()
                    self._frame_left = length
                    continue
                if length > limit:
                    raise LimitExceeded(
                        Reason.LIMIT,
                        "server message frame too large",
                        limit="rsync_client_max_message_frame",
                        tag=tag,
                        length=length,
                    )
                payload = raw.take(length)
            except NeedData:
                raw.rollback()
                return
            raw.commit()
            self._message(tag, payload)

    def _message(self, tag: int, payload: bytes) -> None:
        if tag in (Msg.INFO, Msg.WARNING, Msg.ERROR, Msg.ERROR_XFER, 5, 8):
            text = _server_text(payload)
            if tag not in (Msg.INFO, Msg.WARNING) and not self._first_error:
                self._first_error = text or "error without text"
            self._messages += 1
            if self._messages <= MESSAGE_EVENTS_MAX:
                self._events.append(ServerMessage(tag, text))
        elif tag == Msg.NOOP and not payload:
            pass
        elif tag in (Msg.IO_ERROR, Msg.IO_TIMEOUT) and len(payload) == 4:
            if tag == Msg.IO_ERROR:
                self.io_error |= int.from_bytes(payload, "little")
        elif tag == Msg.ERROR_EXIT and len(payload) in (0, 4):
            code = int.from_bytes(payload, "little") if payload else 0
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_SERVER_ERROR,
                self._first_error or "the server aborted the transfer",
                exit_code=code,
            )
        elif tag == 102 and len(payload) == 4:  # MSG_NO_SEND: the sender could not open a file
            ndx = int.from_bytes(payload, "little")
            name = self.entries[ndx].name if 0 <= ndx < len(self.entries) else str(ndx)
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_SERVER_ERROR,
                self._first_error or f"the server could not send {name!r}",
            )
        else:
            raise self._protocol_error(
                "unexpected multiplexed message", tag=tag, length=len(payload)
            )

    # --- file list ----------------------------------------------------------------------

    def _read_flist(self) -> None:
        buf, lim = self._data, self.limits
        modern = self.protocol >= 30
        while True:
            flags = buf.u8()
            if flags == 0:
                buf.commit()
                if modern:
                    self._finish_flist()
                else:
                    self._goto(_State.IO_ERROR)  # flist.c: an int32 io_error follows at < 30
                return
            if modern and flags & XMIT_EXTENDED_FLAGS:
                flags |= buf.u8() << 8
                if flags == XMIT_EXTENDED_FLAGS | XMIT_IO_ERROR_ENDLIST:
                    if not (self.compat & CF_SAFE_FLIST or self.protocol >= 31):
                        raise self._protocol_error("I/O error marker without safe file lists")
                    self.io_error |= read_varint(buf)
                    buf.commit()
                    self._finish_flist()
                    return
            prefix = buf.u8() if flags & XMIT_SAME_NAME else 0
            if flags & XMIT_LONG_NAME:
                length = read_varint(buf) if modern else buf.i32()
            else:
                length = buf.u8()
            if length < 0 or prefix > len(self._last_name):
                raise self._protocol_error("bad name length in file list")
            if prefix + length > lim.rsync_client_max_path_length:
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_BAD_NAME,
                    "file name too long",
                    length=prefix + length,
                )
            raw_name = self._last_name[:prefix] + buf.take(length)
            if modern:
                size = read_varlong(buf, 3)
            else:
                size = buf.i32()
                if size == -1:
                    size = int.from_bytes(buf.take(8), "little", signed=True)
            mtime = self._last_mtime
            if not flags & XMIT_SAME_TIME:
                mtime = read_varlong(buf, 4) if modern else buf.i32() & 0xFFFFFFFF
            if modern and flags & XMIT_MOD_NSEC:
                nsec = read_varint(buf)
                if not 0 <= nsec < 1_000_000_000:
                    raise self._protocol_error("bad nanoseconds in file list")
            mode = self._last_mode
            if not flags & XMIT_SAME_MODE:
                mode = buf.i32() & 0xFFFFFFFF
            # Complete entry read: commit it, then judge it.
            buf.commit()
            self._last_name, self._last_mode, self._last_mtime = raw_name, mode, mtime
            self._add_entry(raw_name, mode, size, mtime)

    def _add_entry(self, raw_name: bytes, mode: int, size: int, mtime: int) -> None:
        lim = self.limits
        ftype = mode & S_IFMT
        if ftype == S_IFREG:
            kind = EntryKind.FILE
        elif ftype == S_IFDIR:
            kind = EntryKind.DIR
        elif ftype in _OTHER_TYPES:
            kind = EntryKind.OTHER
        else:
            raise self._protocol_error("invalid file mode in file list", mode=oct(mode))
        if raw_name == b".":
            if kind is not EntryKind.DIR:
                raise RemoteProtocolError(Reason.RSYNC_CLIENT_BAD_NAME, "'.' is not a directory")
            name = "."
        else:
            name = check_name(raw_name, lim, kind is EntryKind.DIR)
        if name in self._names:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_BAD_NAME, "duplicate name in file list", name=name[:64]
            )
        if size < 0 or not 0 <= mtime < MAX_MTIME:
            raise self._protocol_error("bad size or time in file list", name=name[:64])
        if len(self._flist) >= lim.rsync_client_max_files:
            raise LimitExceeded(
                Reason.TOO_MANY_OBJECTS,
                "too many files in the file list",
                limit="rsync_client_max_files",
            )
        self._names.add(name)
        self._flist.append(ListEntry(name, kind, size, mtime))

    def _finish_flist(self) -> None:
        self._check_server_errors()
        flist = self._flist
        flist.sort(key=_sort_key_29 if self.protocol >= 29 else _sort_key_27)
        dirs = {"", "."}
        for e in flist:
            parent = e.name.rpartition("/")[0]
            if parent not in dirs:
                raise RemoteProtocolError(
                    Reason.RSYNC_CLIENT_BAD_NAME,
                    "entry whose parent is not a listed directory",
                    name=e.name[:64],
                )
            if e.kind is EntryKind.DIR:
                dirs.add(e.name)
        self.entries = tuple(flist)
        self._flist = []
        self._names = set()
        self._events.append(FileListReceived(self.entries, self.protocol))
        if not self.entries:
            # main.c: nothing to do; the server exits without the phase exchange.
            self._goto(_State.DONE)
            self._emit_done = True
        else:
            self._goto(_State.PLAN)

    def _check_server_errors(self) -> None:
        # An error message or I/O error flag from the server means an incomplete copy (rsync
        # would exit 23 or 24): the fetch fails with the server's own words.
        if self.io_error or self._first_error:
            raise RemoteProtocolError(
                Reason.RSYNC_CLIENT_SERVER_ERROR,
                self._first_error or "the server reported an I/O error",
                io_error=self.io_error,
            )

    # --- transfer -----------------------------------------------------------------------

    def _commit_data(self) -> None:
        self._data.commit()
        self._ndx_mark = (self._ndx_in.prev_pos, self._ndx_in.prev_neg)

    def _read_ndx(self) -> int:
        return self._data.i32() if self.protocol < 30 else self._ndx_in.decode(self._data)

    def _read_transfer(self) -> None:
        buf = self._data
        while self._state is _State.TRANSFER:
            cur = self._incoming
            if cur is None:
                ndx = self._read_ndx()
                if ndx == NDX_DONE:
                    self._commit_data()
                    self._phase_done()
                    continue
                if ndx not in self._outstanding:
                    raise self._protocol_error("answer for a file not requested", ndx=ndx)
                if self.protocol >= 30:
                    iflags = buf.u16()
                    if iflags & ITEM_BASIS_TYPE_FOLLOWS:
                        buf.u8()
                    if iflags & ITEM_XNAME_FOLLOWS:
                        read_vstring(buf, self.limits.rsync_client_max_path_length)
                    if not iflags & ITEM_TRANSFER:
                        raise self._protocol_error("answer without data", ndx=ndx)
                if buf.take(16) != _EMPTY_SUM_HEAD:
                    raise self._protocol_error("sum head differs from the one sent", ndx=ndx)
                self._commit_data()
                self._outstanding.discard(ndx)
                cur = _Incoming(ndx, self.entries[ndx].size, [])
                if self.compress:
                    cur.inflater = zlib.decompressobj(-15)
                self._incoming = cur
            if self._read_tokens(cur):
                self._incoming = None
                self._finish_file(cur)
                if self._events:
                    return

    def _too_long(self, cur: _Incoming) -> RemoteProtocolError:
        return self._protocol_error(
            "file data longer than listed", name=self.entries[cur.index].name[:64]
        )

    def _read_tokens(self, cur: _Incoming) -> bool:
        """Read tokens of the current file; True once its end and checksum arrived."""
        buf = self._data
        inflater = cur.inflater
        while True:
            if cur.literal_left:
                n = min(cur.literal_left, buf.available())
                if n == 0:
                    raise NeedData
                cur.chunks.append(buf.take(n))
                self._commit_data()
                cur.literal_left -= n
                continue
            if inflater is None:
                n = buf.i32()
                if n > 0:
                    if cur.got + n > cur.size:
                        raise self._too_long(cur)
                    cur.got += n
                    self._count(n)
                    self._commit_data()
                    cur.literal_left = n
                    continue
                if n < 0:
                    raise self._protocol_error("block match token, but no blocks were sent")
            else:
                flag = buf.u8()
                if flag & 0xC0 == DEFLATED_DATA:
                    n = (flag & 0x3F) << 8 | buf.u8()
                    piece = buf.take(n)
                    room = cur.size - cur.got
                    out = inflater.decompress(piece, room + 1)
                    if len(out) > room or inflater.unconsumed_tail:
                        raise self._too_long(cur)
                    cur.got += len(out)
                    self._count(len(out))
                    self._commit_data()
                    if out:
                        cur.chunks.append(out)
                    continue
                if flag != 0:
                    raise self._protocol_error("block match token, but no blocks were sent")
            # End of the token stream: the whole-file checksum follows.
            checksum = buf.take(SUM_LENGTH)
            self._commit_data()
            if inflater is not None:
                # token.c strips the sync flush's empty stored block; complete it.
                tail = inflater.decompress(b"\x00\x00\xff\xff", 1)
                if tail:
                    raise self._too_long(cur)
            cur.chunks.append(checksum)
            return True

    def _count(self, n: int) -> None:
        self._bytes_data += n
        if self._bytes_data > self.limits.rsync_client_max_bytes:
            raise LimitExceeded(
                Reason.LIMIT,
                "received more file data than allowed",
                limit="rsync_client_max_bytes",
            )

    def _finish_file(self, cur: _Incoming) -> None:
        checksum = cur.chunks.pop()
        data = b"".join(cur.chunks)
        if self.protocol >= 30:
            digest = hashlib.md5(data, usedforsecurity=False).digest()
        else:
            digest = self._md4(int32(self.seed) + data)
        if digest != checksum:
            raise IntegrityError(
                Reason.RSYNC_CLIENT_CHECKSUM,
                "whole-file checksum mismatch",
                name=self.entries[cur.index].name[:64],
            )
        self.files_received += 1
        self._events.append(FileReceived(cur.index, data))

    def _phase_done(self) -> None:
        # sender.c send_files: the sender echoes each end-of-phase marker; the last one
        # (phase > max_phase) ends the transfer and statistics follow.
        if self._client_dones <= self._server_dones:
            raise self._protocol_error("end of phase before we ended it")
        self._server_dones += 1
        if self._outstanding or self._queue:
            raise self._protocol_error(
                "the server ended the phase with files unsent", missing=len(self._outstanding)
            )
        if self._server_dones <= self.max_phase:
            self._client_dones += 1
            self._send_ndx(NDX_DONE)
        else:
            self._check_server_errors()
            self._goto(_State.STATS)

    def _read_stats(self) -> None:
        buf = self._data
        if self.protocol >= 30:
            for _ in range(5):
                read_varlong(buf, 3)
        else:
            for _ in range(3):
                if buf.i32() == -1:
                    buf.take(8)
        self._commit_data()
        # main.c do_recv: the goodbye; at 31 generate_files' late-delete phase marker first.
        self._send_ndx(NDX_DONE)
        if self.protocol >= 31:
            self._send_ndx(NDX_DONE)
            self._goto(_State.GOODBYE)
        else:
            self._goto(_State.DONE)
            self._emit_done = True

    def _read_goodbye(self) -> None:
        ndx = self._read_ndx()
        self._commit_data()
        if ndx != NDX_DONE:
            raise self._protocol_error("invalid packet at end of run", ndx=ndx)
        self._goto(_State.DONE)
        self._emit_done = True


def include_rules(extensions: Iterable[str], protocol: int) -> tuple[bytes, ...]:
    """rpki-client's filter rules: every directory, files with these extensions, nothing else
    (exclude.c rule syntax; at protocol 27 an exclude is the bare pattern)."""
    rules = [b"+ */"]
    for ext in extensions:
        rules.append(b"+ *." + ext.encode("ascii"))
    rules.append(b"- *" if protocol >= 29 else b"*")
    return tuple(rules)
