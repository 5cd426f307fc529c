"""The native rsync client against hostile rsync servers (rsync-wire.md §8 "output safety").

Each case is a scripted server on 127.0.0.1 (a thread speaking hand-built protocol bytes) that
does one thing a malicious or broken server could do: unsafe names in the file list (``..``,
absolute, ``//``, ``.``, NUL, control characters, backslash, non-ASCII, long components and
paths, deep nesting, duplicates, orphans), symlink and device entries, wrong checksums, data
longer than listed, deflate bombs, too many files or bytes, oversized frames, aborts, silence,
drip-feeding, EOF mid-file, garbage greetings, unsupported protocol versions.  For every case:
the expected reason code, nothing written outside ``dest`` (the parent directory is snapshotted
before and after), no hang (bounded by the timeouts and the deadline), and only
``RpkiRepoError`` subclasses escaping.  A Hypothesis fuzz feeds the sans-I/O receiver mutated
and random server transcripts, split at random points.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require_peer
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
from rpkirepo.rsync._receiver import (
    NEED_DATA,
    EntryKind,
    FileListReceived,
    Receiver,
)
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
    longint,
    varint,
    varlong,
)
from rpkirepo.rsync.client import fetch_module, fetch_module_external
from rpkirepo.uri import RsyncUri

FILE = 0o100644
DIR = 0o040755
LINK = 0o120777
CHARDEV = 0o020644
MTIME = 1_700_000_000
FAST = DEFAULT_LIMITS.override({"rsync_client_io_timeout": 2, "rsync_client_connect_timeout": 2})

Entry = tuple[bytes, int, int]  # name, mode, size
T = TypeVar("T")


# --- hand-built server bytes ----------------------------------------------------------------


def encode_flist(entries: list[Entry], protocol: int) -> bytes:
    """A file list as rsync's flist.c send_file_entry lays it out (no name compression)."""
    out = bytearray()
    for name, mode, size in entries:
        out.append(0x40)  # XMIT_LONG_NAME: never zero, no shared fields
        if protocol >= 30:
            out += varint(len(name)) + name + varlong(size, 3) + varlong(MTIME, 4)
        else:
            out += int32(len(name)) + name + longint(size) + int32(MTIME)
        out += int32(mode)
    out.append(0)
    if protocol < 30:
        out += int32(0)  # io_error
    return bytes(out)


def literal_body(data: bytes, checksum: bytes) -> bytes:
    out = bytearray()
    for off in range(0, len(data), 32768):
        piece = data[off : off + 32768]
        out += int32(len(piece)) + piece
    return bytes(out + int32(0) + checksum)


def deflated_body(data: bytes, checksum: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)).removesuffix(b"\x00\x00\xff\xff")
    out = bytearray()
    for off in range(0, len(body), 16383):
        piece = body[off : off + 16383]
        out += bytes([0x40 | len(piece) >> 8, len(piece) & 0xFF]) + piece
    return bytes(out + b"\x00" + checksum)


def file_sum(data: bytes, protocol: int, seed: int) -> bytes:
    return hashlib.md5(data).digest() if protocol >= 30 else md4(int32(seed) + data)


class Conn:
    """The server side of one connection: lines before the multiplexing, then a data stream
    (demultiplexed from the client's frames at >= 30)."""

    def __init__(self, sock: socket.socket, protocol: int = 31) -> None:
        self.sock = sock
        self.protocol = protocol
        self.raw = bytearray()
        self.buf = Buffer()
        self.muxed = False
        self.ndx_in = NdxReader()
        self.ndx_out = NdxWriter()
        self.seed = 4321

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def data(self, payload: bytes) -> None:
        for off in range(0, len(payload), 32768):
            self.send(frame(Msg.DATA, payload[off : off + 32768]))

    def msg(self, tag: Msg, text: bytes) -> None:
        self.send(frame(tag, text))

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.raw += chunk

    def line(self) -> bytes:
        while b"\n" not in self.raw:
            self._recv()
        line, _, rest = self.raw.partition(b"\n")
        self.raw = bytearray(rest)
        return bytes(line)

    def _fill(self) -> None:
        if not self.muxed:
            self._recv()
            self.buf.feed(bytes(self.raw))
            self.raw.clear()
            return
        while not self._fill_from_raw():
            self._recv()

    def item(self, parse: Callable[[Buffer], T]) -> T:
        while True:
            try:
                value = parse(self.buf)
            except NeedData:
                self.buf.rollback()
                self._fill()
                continue
            self.buf.commit()
            return value

    def handshake(
        self, greeting: bytes = b"", compat: int = 0x28
    ) -> tuple[list[bytes], list[bytes]]:
        """Greeting, module, OK, arguments, compat flags and seed, filter rules."""
        self.send(greeting or f"@RSYNCD: {self.protocol}.0\n".encode())
        self.line()  # client greeting
        self.line()  # module
        self.send(b"@RSYNCD: OK\n")
        sep = b"\0" if self.protocol >= 30 else b"\n"
        while sep + sep not in self.raw:
            self._recv()
        args_raw, _, rest = self.raw.partition(sep + sep)
        self.raw = bytearray(rest)
        args = [bytes(a) for a in args_raw.split(sep)]
        if self.protocol >= 30:
            self.send(varint(compat))
            self.muxed = True
        self.send(int32(self.seed))
        if self.muxed:
            self._fill_from_raw()
        else:
            self.buf.feed(bytes(self.raw))
            self.raw.clear()
        rules: list[bytes] = []
        while True:
            n = self.item(lambda b: b.i32())
            if n == 0:
                return args, rules

            def rule(b: Buffer, n: int = n) -> bytes:
                return b.take(n)

            rules.append(self.item(rule))

    def _fill_from_raw(self) -> bool:
        """Move the complete frames received so far into the data stream; whether any data
        came out of them."""
        got = False
        while len(self.raw) >= 4:
            tag, length = frame_header(int.from_bytes(self.raw[:4], "little"))
            if len(self.raw) < 4 + length:
                break
            if tag == Msg.DATA and length:
                self.buf.feed(bytes(self.raw[4 : 4 + length]))
                got = True
            del self.raw[: 4 + length]
        return got

    def flist(self, entries: list[Entry]) -> None:
        self.data(encode_flist(entries, self.protocol))

    def read_ndx(self) -> int:
        if self.protocol < 30:
            return self.item(lambda b: b.i32())
        return self.item(self.ndx_in.decode)

    def read_request(self) -> tuple[int, int]:
        """(ndx, iflags) of the next request, its sum head read; (-1, 0) for DONE."""
        ndx = self.read_ndx()
        if ndx == NDX_DONE:
            return ndx, 0
        iflags = 0x8000
        if self.protocol >= 30:
            iflags = self.item(lambda b: b.u16())
            if iflags & 0x0800:  # ITEM_BASIS_TYPE_FOLLOWS (the real rsync client)
                self.item(lambda b: b.u8())
            if iflags & 0x1000:  # ITEM_XNAME_FOLLOWS
                n = self.item(lambda b: b.u8())
                self.item(lambda b, n=n: b.take(n))  # type: ignore[misc]
        if not iflags & 0x8000:  # itemized, not transferred (the real client tells us)
            return ndx, iflags
        count, _blength, s2len, _rem = self.item(lambda b: b.i32x4())
        if count:  # block sums (never from our client): skip them

            def sums(b: Buffer, n: int = count * (4 + s2len)) -> bytes:
                return b.take(n)

            self.item(sums)
        return ndx, iflags

    def answer_head(self, ndx: int, iflags: int = 0xA000) -> bytes:
        if self.protocol < 30:
            return int32(ndx) + b"\0" * 16
        return self.ndx_out.encode(ndx) + bytes([iflags & 0xFF, iflags >> 8]) + b"\0" * 16

    def done(self) -> bytes:
        return int32(-1) if self.protocol < 30 else b"\x00"

    def serve(
        self,
        files: dict[int, bytes],
        body: Callable[[int, bytes], bytes] | None = None,
        compress: bool = False,
    ) -> None:
        """Answer requests for ``files`` (sorted position -> content) until the goodbye."""
        max_phase = 2 if self.protocol >= 30 else 1
        phase = 0
        while True:
            ndx, iflags = self.read_request()
            if ndx == NDX_DONE:
                phase += 1
                self.data(self.done())
                if phase > max_phase:
                    break
                continue
            if not iflags & 0x8000:
                self.data(self.ndx_out.encode(ndx) + bytes([iflags & 0xFF, iflags >> 8]))
                continue
            data = files[ndx]
            checksum = file_sum(data, self.protocol, self.seed)
            if body is not None:
                payload = body(ndx, data)
            elif compress:
                payload = deflated_body(data, checksum)
            else:
                payload = literal_body(data, checksum)
            self.data(self.answer_head(ndx) + payload)
        stats = (
            b"".join(varlong(0, 3) for _ in range(5))
            if self.protocol >= 30
            else b"".join(longint(0) for _ in range(3))
        )
        self.data(stats)
        assert self.read_ndx() == NDX_DONE
        if self.protocol >= 31:
            self.data(self.done())
            assert self.read_ndx() == NDX_DONE


Script = Callable[[socket.socket], None]


@contextlib.contextmanager
def scripted_server(script: Script) -> Iterator[int]:
    """Run ``script`` for each connection to 127.0.0.1:PORT in a thread; yield PORT."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    script(conn)
                except (EOFError, OSError):
                    pass  # the client gave up: expected in most cases
                except BaseException as exc:  # reported to the test below
                    errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(15)
        listener.close()
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


class Sandbox:
    """``parent/`` holding a bystander directory and the (empty) ``dest``."""

    def __init__(self, tmp: Path) -> None:
        self.parent = tmp / "parent"
        (self.parent / "bystander").mkdir(parents=True)
        (self.parent / "bystander" / "keep.cer").write_bytes(b"x" * 200)
        (self.parent / "x").write_bytes(b"outside")
        self.dest = self.parent / "dest"
        self.dest.mkdir()
        self.before = {k: v for k, v in snapshot(self.parent).items() if k != "dest"}

    def check(self) -> None:
        after = snapshot(self.parent)
        outside = {k: v for k, v in after.items() if k != "dest" and not k.startswith("dest/")}
        assert outside == self.before
        for rel, (mode, _size, _mt) in after.items():
            if rel.startswith("dest/"):
                assert (mode & 0o170000) in (0o100000, 0o040000), rel


def run_case(
    tmp: Path,
    script: Script,
    *,
    limits: Limits = FAST,
    deadline: float = 8.0,
    protocol: int = 31,
    compress: bool = False,
    path: str = "repo/",
) -> tuple[RpkiRepoError | None, Sandbox, float]:
    box = Sandbox(tmp)
    with scripted_server(script) as port:
        start = time.monotonic()
        error: RpkiRepoError | None = None
        try:
            fetch_module(
                RsyncUri(f"rsync://127.0.0.1:{port}/{path}"),
                box.dest,
                limits=limits,
                deadline=start + deadline,
                protocol=protocol,
                compress=compress,
            )
        except RpkiRepoError as exc:  # anything else escaping fails the test
            error = exc
        elapsed = time.monotonic() - start
    box.check()
    return error, box, elapsed


def list_only(entries: list[Entry], protocol: int = 31) -> Script:
    def script(sock: socket.socket) -> None:
        c = Conn(sock, protocol)
        c.handshake()
        c.flist(entries)
        drain(sock)

    return script


def drain(sock: socket.socket, seconds: float = 3.0) -> None:
    """Read until the client closes (or ``seconds`` pass)."""
    sock.settimeout(seconds)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


# --- unsafe names ---------------------------------------------------------------------------

BAD_NAMES = {
    "dotdot": [(b"a", DIR, 0), (b"a/../../x", FILE, 10)],
    "dotdot-top": [(b"..", DIR, 0)],
    "dotdot-dir": [(b"a", DIR, 0), (b"a/..", DIR, 0), (b"a/../x.cer", FILE, 10)],
    "absolute": [(b"/etc/x", FILE, 10)],
    "double-slash": [(b"a", DIR, 0), (b"a//b", FILE, 10)],
    "dot-component": [(b"a", DIR, 0), (b"a/./b", FILE, 10)],
    "leading-dot-slash": [(b"./b", FILE, 10)],
    "trailing-slash": [(b"a/", DIR, 0)],
    "nul": [(b"a\0b", FILE, 10)],
    "newline": [(b"a\nb", FILE, 10)],
    "escape": [(b"a\x1b[2Jb", FILE, 10)],
    "del": [(b"a\x7fb", FILE, 10)],
    "backslash": [(b"a\\..\\b", FILE, 10)],
    "non-ascii": [("caf\u00e9.cer".encode(), FILE, 10)],
    "latin1": [(b"caf\xe9.cer", FILE, 10)],
    "long-component": [(b"a" * 300, FILE, 10)],
    "long-path": [
        *[(b"/".join([b"d" * 200] * i), DIR, 0) for i in range(1, 7)],
        (b"/".join([b"d" * 200] * 6) + b"/f.cer", FILE, 10),
    ],
    "too-deep": [
        *[(b"/".join([b"d"] * i), DIR, 0) for i in range(1, 35)],
        (b"/".join([b"d"] * 34) + b"/f.cer", FILE, 10),
    ],
    "duplicate": [(b"a.cer", FILE, 10), (b"a.cer", FILE, 10)],
    "file-and-dir": [(b"a", FILE, 10), (b"a", DIR, 0)],
    "orphan": [(b"missing/a.cer", FILE, 10)],
    "under-a-file": [(b"a", FILE, 10), (b"a/b.cer", FILE, 10)],
    "under-a-symlink": [(b"a", LINK, 10), (b"a/b.cer", FILE, 10)],
    "dot-not-dir": [(b".", FILE, 10)],
    "empty": [(b"", FILE, 10)],
}


@pytest.mark.parametrize("protocol", [31, 27])
@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_unsafe_names_fail_before_anything_is_written(
    tmp_path: Path, case: str, protocol: int
) -> None:
    entries = [(b".", DIR, 0), *BAD_NAMES[case]]
    error, box, elapsed = run_case(tmp_path, list_only(entries, protocol), protocol=protocol)
    assert isinstance(error, RemoteProtocolError), error
    assert error.reason is Reason.RSYNC_CLIENT_BAD_NAME, error
    assert list(box.dest.iterdir()) == []  # refused before anything was created
    assert elapsed < 5


# --- entries that are listed but never created, and good content ----------------------------


def serve_entries(
    entries: list[Entry],
    contents: dict[bytes, bytes],
    protocol: int = 31,
    body: Callable[[Conn, int, bytes], bytes] | None = None,
    compress: bool = False,
    before_list: Callable[[Conn], None] | None = None,
) -> Script:
    def script(sock: socket.socket) -> None:
        c = Conn(sock, protocol)
        c.handshake()
        if before_list is not None:
            before_list(c)
        c.flist(entries)
        order = sort_like_receiver(entries, protocol)
        files = {i: contents[e[0]] for i, e in enumerate(order) if e[1] == FILE}
        c.serve(
            files,
            None if body is None else (lambda ndx, data: body(c, ndx, data)),
            compress=compress,
        )

    return script


def sort_like_receiver(entries: list[Entry], protocol: int) -> list[Entry]:
    def key(e: Entry) -> object:
        name = e[0].decode("latin-1")
        if protocol < 29:
            return name
        if name == ".":
            return ()
        parts = name.split("/")
        k = [(1, p + "/") for p in parts[:-1]]
        k.append((1, parts[-1] + "/") if e[1] == DIR else (0, parts[-1]))
        return tuple(k)

    return sorted(entries, key=key)  # type: ignore[arg-type]


GOOD = {b"a/one.cer": os.urandom(300), b"two.roa": os.urandom(70000), b"a/z.mft": b""}
GOOD_ENTRIES: list[Entry] = [
    (b".", DIR, 0),
    (b"a", DIR, 0),
    *[(name, FILE, len(data)) for name, data in GOOD.items()],
]


@pytest.mark.parametrize("protocol", [31, 30, 27])
@pytest.mark.parametrize("compress", [False, True])
def test_symlinks_and_devices_are_listed_but_never_created(
    tmp_path: Path, protocol: int, compress: bool
) -> None:
    entries = [*GOOD_ENTRIES, (b"evil.cer", LINK, 11), (b"a/dev.cer", CHARDEV, 0)]
    script = serve_entries(entries, GOOD, protocol, compress=compress)
    box = Sandbox(tmp_path)
    with scripted_server(script) as port:
        result = fetch_module(
            RsyncUri(f"rsync://127.0.0.1:{port}/repo/"),
            box.dest,
            limits=FAST,
            deadline=time.monotonic() + 8,
            protocol=protocol,
            compress=compress,
        )
    box.check()
    assert result.skipped == 2
    assert {f.path for f in result.files} == {n.decode() for n in GOOD}
    for name, data in GOOD.items():
        assert (box.dest / name.decode()).read_bytes() == data
        assert (box.dest / name.decode()).stat().st_mtime == MTIME
    assert not os.path.lexists(box.dest / "evil.cer")
    assert not os.path.lexists(box.dest / "a" / "dev.cer")


# --- content the server lies about ----------------------------------------------------------


def wrong_checksum(c: Conn, ndx: int, data: bytes) -> bytes:
    return literal_body(data, b"\x01" * 16)


def longer_than_listed(c: Conn, ndx: int, data: bytes) -> bytes:
    extra = data + b"more"
    return literal_body(extra, file_sum(extra, c.protocol, c.seed))


def match_token(c: Conn, ndx: int, data: bytes) -> bytes:
    return int32(-1) + int32(0) + file_sum(data, c.protocol, c.seed)


def eof_mid_file(c: Conn, ndx: int, data: bytes) -> bytes:
    c.data(c.answer_head(ndx) + int32(len(data)) + data[:10])
    raise EOFError


def unrequested(c: Conn, ndx: int, data: bytes) -> bytes:
    c.data(c.answer_head(0) + literal_body(b"", file_sum(b"", c.protocol, c.seed)))
    raise EOFError


def bad_sum_head(c: Conn, ndx: int, data: bytes) -> bytes:
    if c.protocol >= 30:
        head = c.ndx_out.encode(ndx) + b"\x00\xa0" + int32(1) + int32(700) + int32(2) + int32(5)
    else:
        head = int32(ndx) + int32(1) + int32(700) + int32(2) + int32(5)
    c.data(head + literal_body(data, file_sum(data, c.protocol, c.seed)))
    raise EOFError


def error_exit(c: Conn, ndx: int, data: bytes) -> bytes:
    c.msg(Msg.ERROR if c.protocol >= 30 else Msg.ERROR_XFER, b"rsync: send_files failed: boom\n")
    c.msg(Msg.ERROR_EXIT, int32(23))
    raise EOFError


def huge_message_frame(c: Conn, ndx: int, data: bytes) -> bytes:
    c.send(((7 + Msg.INFO) << 24 | 0xFFFFFF).to_bytes(4, "little") + b"x" * 1000)
    drain(c.sock)
    raise EOFError


def unknown_tag(c: Conn, ndx: int, data: bytes) -> bytes:
    c.send(((7 + 77) << 24 | 3).to_bytes(4, "little") + b"abc")
    raise EOFError


def no_send(c: Conn, ndx: int, data: bytes) -> bytes:
    c.send(frame(Msg.DATA, b"") + ((7 + 102) << 24 | 4).to_bytes(4, "little") + int32(ndx))
    drain(c.sock)
    raise EOFError


LIES: dict[str, tuple[Callable[[Conn, int, bytes], bytes], type[RpkiRepoError], Reason]] = {
    "wrong-checksum": (wrong_checksum, IntegrityError, Reason.RSYNC_CLIENT_CHECKSUM),
    "longer-than-listed": (longer_than_listed, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "match-token": (match_token, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "eof-mid-file": (eof_mid_file, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "unrequested": (unrequested, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "sum-head": (bad_sum_head, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "error-exit": (error_exit, RemoteProtocolError, Reason.RSYNC_CLIENT_SERVER_ERROR),
    "huge-frame": (huge_message_frame, LimitExceeded, Reason.LIMIT),
    "unknown-tag": (unknown_tag, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL),
    "no-send": (no_send, RemoteProtocolError, Reason.RSYNC_CLIENT_SERVER_ERROR),
}


@pytest.mark.parametrize(
    ("case", "protocol"),
    # MSG_NO_SEND exists at protocol >= 30 only.
    [(c, p) for c in sorted(LIES) for p in (31, 27) if (c, p) != ("no-send", 27)],
)
def test_lying_servers(tmp_path: Path, case: str, protocol: int) -> None:
    body, kind, reason = LIES[case]
    error, box, elapsed = run_case(
        tmp_path, serve_entries(GOOD_ENTRIES, GOOD, protocol, body=body), protocol=protocol
    )
    assert isinstance(error, kind), error
    assert error.reason is reason, error
    if case == "error-exit":
        assert "boom" in error.detail
    # Only verified files were ever written: nothing here matches a lie.
    for p in box.dest.rglob("*"):
        if p.is_file():
            assert p.read_bytes() == GOOD[p.relative_to(box.dest).as_posix().encode()]
    assert elapsed < 5


def test_deflate_bomb(tmp_path: Path) -> None:
    def bomb(c: Conn, ndx: int, data: bytes) -> bytes:
        big = b"\0" * 20_000_000
        return deflated_body(big, file_sum(big, c.protocol, c.seed))

    error, _box, elapsed = run_case(
        tmp_path, serve_entries(GOOD_ENTRIES, GOOD, body=bomb), compress=True
    )
    assert isinstance(error, RemoteProtocolError) and error.reason is Reason.RSYNC_CLIENT_PROTOCOL
    assert "longer than listed" in error.detail
    assert elapsed < 5


# --- caps ---------------------------------------------------------------------------------


def test_too_many_files(tmp_path: Path) -> None:
    entries = [(b".", DIR, 0), *[(f"f{i}.cer".encode(), FILE, 1) for i in range(50)]]
    limits = FAST.override({"rsync_client_max_files": 20})
    error, box, _ = run_case(tmp_path, list_only(entries), limits=limits)
    assert isinstance(error, LimitExceeded) and error.reason is Reason.TOO_MANY_OBJECTS
    assert error.context["limit"] == "rsync_client_max_files"
    assert list(box.dest.iterdir()) == []


def test_total_bytes_over_the_cap(tmp_path: Path) -> None:
    limits = FAST.override({"rsync_client_max_bytes": 50_000})
    error, box, _ = run_case(tmp_path, serve_entries(GOOD_ENTRIES, GOOD), limits=limits)
    assert isinstance(error, LimitExceeded), error
    assert error.context["limit"] == "rsync_client_max_bytes"
    assert [p for p in box.dest.rglob("*") if p.is_file()] == []


def test_files_over_max_object_size_are_skipped_not_requested(tmp_path: Path) -> None:
    requested: list[int] = []

    def spy(c: Conn, ndx: int, data: bytes) -> bytes:
        requested.append(ndx)
        return literal_body(data, file_sum(data, c.protocol, c.seed))

    limits = FAST.override({"max_object_size": 1000})
    box = Sandbox(tmp_path)
    with scripted_server(serve_entries(GOOD_ENTRIES, GOOD, body=spy)) as port:
        result = fetch_module(RsyncUri(f"rsync://127.0.0.1:{port}/repo/"), box.dest, limits=limits)
    assert result.skipped == 1 and len(requested) == 2 == result.files_fetched
    assert not (box.dest / "two.roa").exists()


# --- sessions that go wrong before the list --------------------------------------------------


def greeting_only(greeting: bytes) -> Script:
    def script(sock: socket.socket) -> None:
        sock.sendall(greeting)
        drain(sock)

    return script


def silent(sock: socket.socket) -> None:
    drain(sock, 5)


def drip(sock: socket.socket) -> None:
    for byte in b"@RSYNCD: 31.0\n" * 100:
        sock.sendall(bytes([byte]))
        time.sleep(0.3)


def keepalive_flood(sock: socket.socket) -> None:
    c = Conn(sock)
    c.handshake()
    for _ in range(200):
        c.send(frame(Msg.DATA, b""))
        c.send(frame(Msg.NOOP, b""))
        time.sleep(0.05)


def auth_required(sock: socket.socket) -> None:
    sock.sendall(b"@RSYNCD: 31.0\n@RSYNCD: AUTHREQD abcdef\n")
    drain(sock)


def unknown_module(sock: socket.socket) -> None:
    sock.sendall(b"@RSYNCD: 31.0\nwelcome to the motd\n@ERROR: Unknown module 'repo'\n")


def inc_recurse(sock: socket.socket) -> None:
    Conn(sock).handshake(compat=0x29)


def error_after_args(sock: socket.socket) -> None:
    c = Conn(sock)
    c.handshake()
    c.msg(Msg.ERROR, b"rsync: on remote machine: --sender: unknown option\n")


def missing_path(sock: socket.socket) -> None:
    c = Conn(sock)
    c.handshake()
    c.msg(Msg.ERROR_XFER, b'rsync: [sender] link_stat "x" (in repo) failed: No such file\n')
    c.data(b"\x04\x10" + varint(1))  # XMIT_EXTENDED_FLAGS|XMIT_IO_ERROR_ENDLIST, io_error 1


def motd_flood(sock: socket.socket) -> None:
    sock.sendall(b"@RSYNCD: 31.0\n")
    for _ in range(2000):
        sock.sendall(b"x" * 100 + b"\n")
    # Closing now could reset the connection while the client still writes its own greeting,
    # and a reset discards what the client has not read yet: the flood it must refuse.
    drain(sock)


EARLY: dict[str, tuple[Script, type[RpkiRepoError], Reason, float]] = {
    "garbage-greeting": (
        greeting_only(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "binary-greeting": (
        greeting_only(os.urandom(64).replace(b"\n", b"") + b"\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "endless-greeting": (
        greeting_only(b"@RSYNCD: " + b"9" * 200_000),
        LimitExceeded,
        Reason.LIMIT,
        5,
    ),
    "protocol-26": (
        greeting_only(b"@RSYNCD: 26\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "protocol-29": (
        greeting_only(b"@RSYNCD: 29.0\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "protocol-99": (
        greeting_only(b"@RSYNCD: 99.0\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "no-subprotocol": (
        greeting_only(b"@RSYNCD: 31\n"),
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_PROTOCOL,
        5,
    ),
    "silent": (silent, RemoteProtocolError, Reason.RSYNC_CLIENT_TIMEOUT, 3.5),
    "drip-feed": (drip, RemoteProtocolError, Reason.RSYNC_CLIENT_TIMEOUT, 4.5),
    "keepalive-flood": (keepalive_flood, RemoteProtocolError, Reason.RSYNC_CLIENT_TIMEOUT, 4.5),
    "auth-required": (auth_required, RemoteProtocolError, Reason.RSYNC_CLIENT_SERVER_ERROR, 5),
    "unknown-module": (unknown_module, RemoteProtocolError, Reason.RSYNC_CLIENT_SERVER_ERROR, 5),
    "inc-recurse": (inc_recurse, RemoteProtocolError, Reason.RSYNC_CLIENT_PROTOCOL, 5),
    "error-after-args": (
        error_after_args,
        RemoteProtocolError,
        Reason.RSYNC_CLIENT_SERVER_ERROR,
        5,
    ),
    "missing-path": (missing_path, RemoteProtocolError, Reason.RSYNC_CLIENT_SERVER_ERROR, 5),
    "motd-flood": (motd_flood, LimitExceeded, Reason.LIMIT, 5),
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_sessions_that_fail_early(tmp_path: Path, case: str) -> None:
    script, kind, reason, bound = EARLY[case]
    deadline = 3.0 if case in ("drip-feed", "keepalive-flood") else 8.0
    error, box, elapsed = run_case(tmp_path, script, deadline=deadline)
    assert isinstance(error, kind), error
    assert error.reason is reason, error
    assert elapsed < bound
    assert list(box.dest.iterdir()) == []
    if case == "unknown-module":
        assert "Unknown module" in error.detail
    if case == "missing-path":
        assert "No such file" in error.detail


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Sandbox(tmp_path)
    with pytest.raises(RemoteProtocolError) as info:
        fetch_module(RsyncUri(f"rsync://127.0.0.1:{port}/repo/"), box.dest, limits=FAST)
    assert info.value.reason is Reason.RSYNC_CLIENT_CONNECT


def test_a_symlink_planted_in_dest_is_not_followed(tmp_path: Path) -> None:
    # dest must be empty, so a planted symlink is refused up front ...
    box = Sandbox(tmp_path)
    (box.dest / "a").symlink_to(box.parent / "bystander")
    with (
        scripted_server(serve_entries(GOOD_ENTRIES, GOOD)) as port,
        pytest.raises(RpkiRepoError) as info,
    ):
        fetch_module(RsyncUri(f"rsync://127.0.0.1:{port}/repo/"), box.dest, limits=FAST)
    assert info.value.reason is Reason.STORAGE_UNEXPECTED
    (box.dest / "a").unlink()
    box.check()


# --- fuzz -----------------------------------------------------------------------------------


def transcript(protocol: int = 31) -> bytes:
    """Everything a well-behaved server sends for GOOD, in one piece."""
    seed = 99
    out = bytearray(f"@RSYNCD: {protocol}.0\nmotd line\n@RSYNCD: OK\n".encode())
    if protocol >= 30:
        out += varint(0x28)
    out += int32(seed)
    body = bytearray(encode_flist(GOOD_ENTRIES, protocol))
    ndx = NdxWriter()
    order = sort_like_receiver(GOOD_ENTRIES, protocol)
    for i, e in enumerate(order):
        if e[1] != FILE:
            continue
        data = GOOD[e[0]]
        head = int32(i) if protocol < 30 else ndx.encode(i) + b"\x00\xa0"
        body += head + b"\0" * 16 + literal_body(data, file_sum(data, protocol, seed))
    done = int32(-1) if protocol < 30 else b"\x00"
    phases = 3 if protocol >= 30 else 2
    body += done * phases
    body += b"".join(varlong(0, 3) for _ in range(5)) if protocol >= 30 else longint(0) * 3
    if protocol >= 31:
        body += done
    for off in range(0, len(body), 1000):
        out += frame(Msg.DATA, body[off : off + 1000])
    return bytes(out)


def drive(data: bytes, chunks: list[int], protocol: int = 31) -> Receiver:
    """Feed ``data`` split at ``chunks`` to a receiver that asks for every file."""
    r = Receiver("repo", protocol=protocol, limits=DEFAULT_LIMITS)
    pos = 0
    pieces = []
    for n in chunks:
        pieces.append(data[pos : pos + n])
        pos += n
    pieces.append(data[pos:])
    for piece in [*pieces, b""]:
        r.receive_data(piece)
        while True:
            event = r.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, FileListReceived):
                r.request([i for i, e in enumerate(event.entries) if e.kind is EntryKind.FILE])
            r.data_to_send()  # requests go out before any answer can come back
        r.data_to_send()
        if r.finished:
            break
    return r


@pytest.mark.parametrize("protocol", [31, 30, 27])
def test_transcript_is_accepted_in_any_split(protocol: int) -> None:
    data = transcript(protocol)
    for step in (1, 7, 4096):
        r = drive(data, [step] * (len(data) // step), protocol)
        assert r.finished and r.files_received == 3


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.data(),
    st.sampled_from([31, 30, 27]),
)
def test_fuzz_only_project_errors_escape(data: st.DataObject, protocol: int) -> None:
    base = bytearray(transcript(protocol))
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "random"]))
    if kind == "random":
        head = base[: data.draw(st.integers(0, 60))]
        base = head + data.draw(st.binary(max_size=2000))
    elif kind == "truncate":
        base = base[: data.draw(st.integers(0, len(base)))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(base) - 1))
            if kind == "flip":
                base[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "insert":
                base[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            else:
                del base[pos : pos + data.draw(st.integers(1, 8))]
    chunks = data.draw(st.lists(st.integers(1, 300), max_size=20))
    try:
        drive(bytes(base), chunks, protocol)
    except LocalProtocolError:  # our own bug, not the server's
        raise
    except RpkiRepoError:
        pass


# --- the external variant (the rsync program) against the same servers ----------------------


@pytest.mark.parametrize("case", ["dotdot-dir", "absolute", "newline", "backslash"])
def test_external_variant_refuses_unsafe_names(tmp_path: Path, case: str) -> None:
    # rsync itself refuses some; what it accepts and writes, our walk of dest refuses.
    require_peer("rsync")
    entries = [(b".", DIR, 0), *BAD_NAMES[case]]
    contents = {name: b"x" * size for name, mode, size in entries if mode == FILE}
    box = Sandbox(tmp_path)
    with scripted_server(serve_entries(entries, contents)) as port:
        start = time.monotonic()
        with pytest.raises(RemoteProtocolError) as info:
            fetch_module_external(
                RsyncUri(f"rsync://127.0.0.1:{port}/repo/"),
                box.dest,
                limits=FAST,
                deadline=start + 6,
            )
    assert info.value.reason in (Reason.RSYNC_CLIENT_EXTERNAL, Reason.RSYNC_CLIENT_BAD_NAME)
    assert time.monotonic() - start < 6
    box.check()


def test_external_variant_times_out(tmp_path: Path) -> None:
    require_peer("rsync")
    box = Sandbox(tmp_path)
    slow = FAST.override({"rsync_client_io_timeout": 30})  # only the deadline can stop it
    with scripted_server(lambda sock: drain(sock, 5)) as port:
        start = time.monotonic()
        with pytest.raises(RemoteProtocolError) as info:
            fetch_module_external(
                RsyncUri(f"rsync://127.0.0.1:{port}/repo/"),
                box.dest,
                limits=slow,
                deadline=start + 2,
            )
    assert info.value.reason is Reason.RSYNC_CLIENT_TIMEOUT
    assert time.monotonic() - start < 4
    box.check()
