"""The sans-I/O daemon session: scripted clients, one byte at a time, hostile input, fuzzing.

A scripted client builds exactly the bytes rsync sends (rsync-wire §3-5); a small independent
decoder reads the server's answer back (frames, file list, tokens, checksums).  Interop with the
real client is in test_rsyncd_peer.py; here every byte is under control.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rsync import Revision, RevisionBuilder, Session, SessionEnded, State
from rpkirepo.rsync._md4 import md4
from rpkirepo.rsync._model import Checksum, MemorySource, SpoolSource, xxh128
from rpkirepo.rsync._wire import (
    Buffer,
    Msg,
    NdxReader,
    NdxWriter,
    frame,
    int32,
    read_varint,
    read_varlong,
    varint,
    vstring,
)

FILES = {
    "a.cer": b"A" * 3000,
    "-x.cer": b"minus",
    "sub/b.roa": bytes(range(256)) * 400,
    "sub/deep/c.mft": b"hello world\n",
    "sub.crl": b"crl!" * 40,
}


def make_revision(
    files: dict[str, bytes],
    name: str = "r1",
    seed: int = 1234,
    *,
    spool: SpoolSource | None = None,
    spool_at: dict[bytes, int] | None = None,
) -> Revision:
    """A revision of ``files`` in memory; with ``spool``, one whose answers are there, at the
    offsets ``spool_at`` gives per path (test_rsyncd_spool.py)."""
    b = RevisionBuilder(name, max_entries=1_000_000, seed=seed)
    b.set_root_mtime(946684800)
    at = spool_at or {}
    dirs: set[str] = set()
    for path in sorted(files):
        parts = path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                b.add_dir(d.encode(), 946684800, at.get(d.encode(), -1))
        if spool is None:
            b.add_file(path.encode(), 1700000000 + len(path), files[path])
        else:
            data = files[path]
            md5 = hashlib.md5(data).digest()
            mtime = 1700000000 + len(path)
            b.add_file_digest(path.encode(), mtime, len(data), md5, at[path.encode()])
    if spool is None:
        return b.build()
    return b.build(MemorySource({k.encode(): v for k, v in files.items()}), spool)


RPKI_ARGS = ["--server", "--sender", "-tre.iLsfxCIvu", "--timeout=30", ".", "repo/"]
#: What rsync 3.x offers when it negotiates (compat.c, default lists without "none").
CLIENT_CHECKSUMS = b"xxh128 xxh3 xxh64 md5 md4 sha1"
CLIENT_COMPRESSORS = b"zstd lz4 zlibx zlib"


def short_options(argv: Sequence[str]) -> tuple[str, str]:
    """The letters of the short option cluster, and the client info after its ``e``."""
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and "e" in a:
            letters, _, info = a[1:].partition("e")
            return letters, info
    return "", ""


def file_sum(data: bytes, protocol: int, argv: Sequence[str] = RPKI_ARGS) -> bytes:
    """The whole-file checksum a session with this client sends: xxh128 when it negotiates
    (``v`` in its info), MD5 otherwise, seeded MD4 at protocol 27 (seed 1234)."""
    if protocol < 30:
        return md4(int32(1234) + data)
    return xxh128(data) if "v" in short_options(argv)[1] else hashlib.md5(data).digest()


@dataclass
class Client:
    """Builds what a real client sends, protocol by protocol."""

    protocol: int
    argv: Sequence[str] = tuple(RPKI_ARGS)
    rules: Sequence[bytes] = ()
    checksums: bytes = CLIENT_CHECKSUMS
    compressors: bytes = CLIENT_COMPRESSORS

    def __post_init__(self) -> None:
        self.ndx = NdxWriter()

    def greeting(self) -> bytes:
        v = "27" if self.protocol == 27 else f"{self.protocol}.0 md5 md4"
        return f"@RSYNCD: {v}\n".encode() + b"repo\n"

    def args(self) -> bytes:
        sep = b"\x00" if self.protocol >= 30 else b"\n"
        return b"".join(a.encode() + sep for a in self.argv) + sep + self.negotiation()

    def negotiation(self) -> bytes:
        """The name lists rsync >= 3.2 sends (before it multiplexes) when it negotiates."""
        letters, info = short_options(self.argv)
        if self.protocol < 30 or "v" not in info:
            return b""
        out = b""
        if not any(a.startswith("--checksum-choice=") for a in self.argv):
            out += vstring(self.checksums)
        compress_choice = ("--compress-choice=", "--new-compress", "--old-compress")
        compressing = "z" in letters or any(a.startswith("--compress-level=") for a in self.argv)
        if compressing and not any(a.startswith(compress_choice) for a in self.argv):
            out += vstring(self.compressors)
        return out

    def data(self, payload: bytes) -> bytes:
        if self.protocol < 30:
            return payload
        step = 32768
        return b"".join(
            frame(Msg.DATA, payload[i : i + step]) for i in range(0, max(len(payload), 1), step)
        )

    def filters(self) -> bytes:
        return self.data(b"".join(int32(len(r)) + r for r in self.rules) + int32(0))

    def request(
        self, ndx: int, sums: tuple[int, int, int, int] = (0, 0, 0, 0), junk: bytes = b""
    ) -> bytes:
        head = b"".join(int32(v) for v in sums) + junk
        if self.protocol >= 30:
            return self.data(self.ndx.encode(ndx) + b"\x00\x80" + head)
        return int32(ndx) + head

    def done(self) -> bytes:
        return self.data(b"\x00" if self.protocol >= 30 else int32(-1))

    def dones(self) -> bytes:
        n = {27: 3, 30: 4, 31: 5}[self.protocol]
        return b"".join(self.done() for _ in range(n))


def run(session: Session, data: bytes, step: int | None = None) -> bytes:
    out = bytearray(session.data_to_send())
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        session.receive_data(chunk)
        out += session.data_to_send()
        while True:
            more = session.data_to_send()
            if not more:
                break
            out += more
    return bytes(out)


def catalog(rev: Revision):  # type: ignore[no-untyped-def]
    return {"repo": lambda: rev}


# --- an independent decoder of what the server sent ---------------------------------------


@dataclass
class Decoded:
    greeting: bytes
    seed: int
    messages: list[tuple[int, bytes]]
    stream: bytes
    compat: int = 0
    lists: tuple[bytes, ...] = ()  # the name lists the server offered


#: What our server offers when a client negotiates.
SERVER_LISTS = (b"xxh128 md5", b"zlibx zlib")


def split_output(out: bytes, protocol: int) -> Decoded:
    ok = out.index(b"@RSYNCD: OK\n") + len(b"@RSYNCD: OK\n")
    pos, compat, lists = ok, 0, []
    if protocol >= 30:
        head = Buffer()
        head.feed(out[ok : ok + 2])
        compat = read_varint(head)
        head.commit()
        pos += head.consumed
        while compat & 0x80 and any(out.startswith(vstring(x), pos) for x in SERVER_LISTS):
            lists.append(out[pos + 1 : pos + 1 + out[pos]])
            pos += 1 + out[pos]
    seed = int.from_bytes(out[pos : pos + 4], "little", signed=True)
    pos += 4
    stream, messages = bytearray(), []
    while pos < len(out):
        head = int.from_bytes(out[pos : pos + 4], "little")
        tag, n = (head >> 24) - 7, head & 0xFFFFFF
        payload = out[pos + 4 : pos + 4 + n]
        assert len(payload) == n
        if tag == 0:
            stream += payload
        else:
            messages.append((tag, payload))
        pos += 4 + n
    return Decoded(out[:ok], seed, messages, bytes(stream), compat, tuple(lists))


def decode_flist_31(buf: Buffer, varint_flags: bool = True) -> list[tuple[str, int, int, int]]:
    """A protocol >= 30 file list; ``varint_flags``: as sent to a client that negotiated."""
    entries: list[tuple[str, int, int, int]] = []
    name, mode, mtime = b"", 0, 0
    while True:
        if varint_flags:
            flags = read_varint(buf)
            if flags == 0:
                assert read_varint(buf) == 0  # io_error
                return entries
        else:
            flags = buf.u8()
            if flags == 0:
                return entries
            if flags & 0x04:
                flags |= buf.u8() << 8
        prefix = buf.u8() if flags & 0x20 else 0
        n = read_varint(buf) if flags & 0x40 else buf.u8()
        name = name[:prefix] + buf.take(n)
        size = read_varlong(buf, 3)
        if not flags & 0x80:
            mtime = read_varlong(buf, 4)
        if not flags & 0x02:
            mode = buf.i32()
        entries.append((name.decode(), size, mtime, mode))


def read_file_response(
    buf: Buffer, protocol: int, ndx_reader: NdxReader | None
) -> tuple[int, bytes, bytes]:
    ndx = ndx_reader.decode(buf) if ndx_reader else buf.i32()
    if protocol >= 30:
        buf.u16()
    head = [buf.i32() for _ in range(4)]
    assert head[0] >= 0
    data = bytearray()
    while (n := buf.i32()) != 0:
        data += buf.take(n)
    return ndx, bytes(data), buf.take(16)


# --- whole sessions -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [31, 30, 27])
@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize("info", [".iLsfxCIvu", ".iLsfxCIu"])
def test_full_session_any_split(protocol: int, step: int | None, info: str) -> None:
    """With ``v`` in its info the client negotiates (xxh128, varint list flags); without it, it
    gets MD5 and byte flags, as rsync < 3.2 does."""
    argv = ["--server", "--sender", f"-tre{info}", "--timeout=30", ".", "repo/"]
    rev = make_revision(FILES)
    client = Client(protocol, argv=argv)
    # Requests for every regular file, in index order of the list the server sends.
    probe = Session(catalog(rev))
    run(probe, client.greeting() + client.args() + client.filters())
    assert probe.flist is not None
    regular = [i for i in range(len(probe.flist)) if not probe.flist.is_dir(i)]
    client = Client(protocol, argv=argv)
    script = client.greeting() + client.args() + client.filters()
    script += b"".join(client.request(i) for i in regular) + client.dones()
    session = Session(catalog(rev))
    out = run(session, script, step)
    assert session.finished and session.state is State.DONE
    events = []
    while (e := session.next_event()) is not None:
        events.append(e)
    assert events[-1] == SessionEnded(None)
    assert session.files_sent == len(FILES)
    # The same stream whatever the split (only the framing may differ).
    d = split_output(out, protocol)
    whole = split_output(run(Session(catalog(rev)), script), protocol)
    assert (d.stream, d.messages) == (whole.stream, whole.messages)
    assert d.greeting.startswith(b"@RSYNCD: 31.0\n")
    assert d.seed == 1234 and d.messages == []
    negotiated = protocol >= 30 and "v" in info
    assert (d.compat & 0x80 != 0, d.lists) == (
        (True, (b"xxh128 md5",)) if negotiated else (False, ())
    )
    buf = Buffer()
    buf.feed(d.stream)
    names = [rev.list_name(probe.flist, i).decode() for i in range(len(probe.flist))]
    if protocol >= 30:
        listed = decode_flist_31(buf, negotiated)
        assert [x[0] for x in listed] == names
        assert names == [
            ".",
            "-x.cer",
            "a.cer",
            "sub.crl",
            "sub",
            "sub/b.roa",
            "sub/deep",
            "sub/deep/c.mft",
        ]
        for name, size, mtime, mode in listed:
            if name in FILES:
                assert (size, mtime, mode) == (len(FILES[name]), 1700000000 + len(name), 0o100644)
            else:
                assert mode == 0o040755 and mtime == 946684800
    else:
        # Protocol 27 sorts full names bytewise: "-x.cer" before ".".
        assert names == [
            "-x.cer",
            ".",
            "a.cer",
            "sub",
            "sub.crl",
            "sub/b.roa",
            "sub/deep",
            "sub/deep/c.mft",
        ]
        assert d.stream.startswith(probe.flist.encoded + int32(0))  # list, then io_error
        buf = Buffer()
        buf.feed(d.stream[len(probe.flist.encoded) + 4 :])
    reader = NdxReader() if protocol >= 30 else None
    for i in regular:
        ndx, data, checksum = read_file_response(buf, protocol, reader)
        name = names[ndx]
        assert ndx == i and data == FILES[name]
        assert checksum == file_sum(data, protocol, argv)


@pytest.mark.parametrize("protocol", [31, 27])
def test_compressed_tokens_inflate_to_the_file(protocol: int) -> None:
    rev = make_revision({"big.crl": bytes(range(256)) * 500})
    argv = ["--server", "--sender", "-trze.iLsfxCIvu", ".", "repo/"]
    client = Client(protocol, argv=argv)
    script = client.greeting() + client.args() + client.filters() + client.request(1)
    session = Session(catalog(rev))
    out = run(session, script + client.dones())
    assert session.finished and session.flist is not None
    stream = split_output(out, protocol).stream
    body = bytearray()
    # list [+ io_error] + ndx [+ iflags] + sum head echo, then the deflated tokens
    start = len(session.flist.encoded) + (4 if protocol < 30 else 0)
    i = start + (4 if protocol < 30 else 3) + 16
    while stream[i] != 0:
        n = (stream[i] & 0x3F) << 8 | stream[i + 1]
        body += stream[i + 2 : i + 2 + n]
        i += 2 + n
    assert (
        zlib.decompressobj(-15).decompress(bytes(body) + b"\x00\x00\xff\xff")
        == bytes(range(256)) * 500
    )


def test_revision_switch_mid_session_keeps_the_old_revision() -> None:
    old, new = make_revision({"a.cer": b"old" * 50}), make_revision({"a.cer": b"new!" * 50}, "r2")
    current = [old]
    session = Session({"repo": lambda: current[0]})
    client = Client(31)
    out = run(session, client.greeting() + client.args() + client.filters())
    current[0] = new  # the daemon installs a new revision
    out += run(session, client.request(1) + client.dones())
    assert b"old" * 50 in split_output(out, 31).stream
    assert session.finished


def test_module_listing() -> None:
    session = Session({"repo": lambda: None, "other": lambda: None})
    out = run(session, b"@RSYNCD: 31.0\n\n")
    assert out == b"@RSYNCD: 31.0\nother          \t\nrepo           \t\n@RSYNCD: EXIT\n"
    assert session.finished


def test_openrsync_style_protocol_27_transcript() -> None:
    # openrsync: greeting without sub-version, module sent at once, split flags, module without
    # a slash, --max-size/--min-size, blength 32768 and count 0 in the sum head.
    rev = make_revision(FILES)
    argv = [
        "--server",
        "--sender",
        "-r",
        "-t",
        "-O",
        "--max-size=8000000",
        "--min-size=100",
        ".",
        "repo",
    ]
    client = Client(27, argv=argv)
    script = b"@RSYNCD: 27\nrepo\n" + client.args() + client.filters()
    script += client.request(2, (0, 32768, 2, 0)) + client.dones()
    session = Session(catalog(rev))
    out = run(session, script)
    assert session.finished and session.protocol == 27
    stream = split_output(out, 27).stream
    assert FILES["a.cer"] in stream


# --- negotiation and refusals -------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "protocol"),
    [(b"@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4\n", 31), (b"@RSYNCD: 31.0\n", 31),
     (b"@RSYNCD: 30.0\r\n", 30), (b"@RSYNCD: 27\n", 27), (b"@RSYNCD: 27.0\n", 27),
     (b"@RSYNCD: 31.5\n", 30), (b"@RSYNCD: 32.1\n", 31)],
)  # fmt: skip
def test_protocol_negotiation(greeting: bytes, protocol: int) -> None:
    session = Session(catalog(make_revision(FILES)))
    run(session, greeting)
    assert session.protocol == protocol and session.state is State.MODULE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"@RSYNCD: 29\n", Reason.RSYNC_PROTOCOL_VERSION),
        (b"@RSYNCD: 28.0\n", Reason.RSYNC_PROTOCOL_VERSION),
        (b"@RSYNCD: 26\n", Reason.RSYNC_PROTOCOL_VERSION),
        (b"@RSYNCD: 30.1\n", Reason.RSYNC_PROTOCOL_VERSION),
        (b"@RSYNCD: x\n", Reason.RSYNC_GREETING),
        (b"@RSYNCD: 2147483648\n", Reason.RSYNC_GREETING),
        (b"HELLO\n", Reason.RSYNC_GREETING),
        (b"@RSYNCD: " + b"3" * 1000, Reason.RSYNC_GREETING),
        (b"@RSYNCD: 31.0\n../etc\n", Reason.RSYNC_MODULE_NAME),
        (b"@RSYNCD: 31.0\n" + b"m" * 200 + b"\n", Reason.RSYNC_MODULE_NAME),
        (b"@RSYNCD: 31.0\n" + b"m" * 10_000, Reason.RSYNC_GREETING),
        (b"@RSYNCD: 31.0\n#early_input=5\n", Reason.RSYNC_MODULE_NAME),
        (b"@RSYNCD: 31.0\nnosuch\n", Reason.RSYNC_UNKNOWN_MODULE),
    ],
)
def test_greeting_and_module_refusals(data: bytes, reason: Reason) -> None:
    session = Session(catalog(make_revision(FILES)))
    out = session.data_to_send()
    with pytest.raises((RemoteProtocolError, LimitExceeded)) as exc:
        session.receive_data(data)
    assert exc.value.reason is reason
    out += session.data_to_send()
    assert out.startswith(b"@RSYNCD: 31.0\n") and b"@ERROR: " in out
    assert session.state is State.FAILED and session.finished


def _refused_after_ok(
    protocol: int, tail: bytes, argv: Sequence[str] = tuple(RPKI_ARGS), client: Client | None = None
) -> tuple[Reason, bytes, Session]:
    client = client or Client(protocol, argv=argv)
    session = Session(catalog(make_revision(FILES)))
    out = session.data_to_send()
    with pytest.raises((RemoteProtocolError, LimitExceeded)) as exc:
        session.receive_data(client.greeting() + client.args() + tail)
    out += session.data_to_send()
    assert session.state is State.FAILED
    return exc.value.reason, out, session


@pytest.mark.parametrize("protocol", [31, 27])
@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--server", "-tre.iLsfxCIvu", ".", "repo/"], Reason.RSYNC_READ_ONLY),
        (["--server", "--sender", "-s", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "-r", ".", "repo/../x"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", ".", "repo//"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", ".", "/etc"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", ".", "other/x"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", ".", "repo/a*"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", ".", "repo/", "repo/x"], Reason.RSYNC_PATH),
    ],
)
def test_argument_refusals_reach_the_client(protocol: int, argv: list[str], reason: Reason) -> None:
    got, out, _ = _refused_after_ok(protocol, b"", argv)
    assert got is reason
    d = split_output(out, protocol)
    tag = Msg.ERROR if protocol >= 30 else Msg.ERROR_XFER
    assert len(d.messages) == 1 and d.messages[0][0] == tag
    assert d.messages[0][1].startswith(b"rsync: ") and d.messages[0][1].endswith(b"\n")


def _one_file_session(client: Client) -> tuple[Decoded, Session]:
    """A whole session asking for every regular file of FILES; the decoded output."""
    session = Session(catalog(make_revision(FILES)))
    head = run(session, client.greeting() + client.args() + client.filters())
    assert session.flist is not None, split_output(head, client.protocol).messages
    regular = [i for i in range(len(session.flist)) if not session.flist.is_dir(i)]
    out = head + run(session, b"".join(client.request(i) for i in regular) + client.dones())
    assert session.state is State.DONE
    return split_output(out, client.protocol), session


def _sums(d: Decoded, session: Session, varint_flags: bool) -> dict[str, bytes]:
    buf = Buffer()
    buf.feed(d.stream)
    decode_flist_31(buf, varint_flags)
    assert session.flist is not None
    reader, sums = NdxReader(), {}
    for _ in range(sum(1 for i in range(len(session.flist)) if not session.flist.is_dir(i))):
        ndx, data, checksum = read_file_response(buf, 31, reader)
        assert session.revision is not None
        sums[session.revision.list_name(session.flist, ndx).decode()] = checksum
        assert data == FILES[session.revision.list_name(session.flist, ndx).decode()]
    return sums


@pytest.mark.parametrize(
    ("checksums", "expected"),
    [
        (CLIENT_CHECKSUMS, "xxh128"),
        (b"xxh3 md5 md4", "md5"),  # an older xxhash: no xxh128
        (b"md5", "md5"),  # RSYNC_CHECKSUM_LIST=md5
        (b"md4 md5", "md5"),
        # The client ranks by its own list: it takes md5 here, and so must we.
        (b"md5 xxh128", "md5"),
        (b"sha1 xxh128 md5", "xxh128"),
    ],
)
def test_checksum_negotiation_picks_the_first_offer_the_client_has(
    checksums: bytes, expected: str
) -> None:
    d, session = _one_file_session(Client(31, checksums=checksums))
    assert d.compat & 0x80 and d.lists == (b"xxh128 md5",)
    assert session.checksum.value == expected
    digest = xxh128 if expected == "xxh128" else (lambda b: hashlib.md5(b).digest())
    assert _sums(d, session, True) == {name: digest(data) for name, data in FILES.items()}


@pytest.mark.parametrize(
    ("argv", "lists", "expected"),
    [
        # The client chose itself: nothing of it is negotiated (no list either way).
        (["-tre.iLsfxCIvu", "--checksum-choice=md5"], (), "md5"),
        (["-tre.iLsfxCIvu", "--checksum-choice=xxh128"], (), "xxh128"),
        (["-trze.iLsfxCIvu"], (b"xxh128 md5", b"zlibx zlib"), "xxh128"),
        (["-trze.iLsfxCIvu", "--new-compress"], (b"xxh128 md5",), "xxh128"),
        (["-trze.iLsfxCIvu", "--compress-choice=zlib"], (b"xxh128 md5",), "xxh128"),
        (["-trze.iLsfxCIvu", "--checksum-choice=md5", "--old-compress"], (), "md5"),
        # No ``v``: an rsync before 3.2, MD5 and byte flags.
        (["-trze.iLsfxCIu"], (), "md5"),
        # rsync >= 3.2 with --compress-level alone: compression on, compressor negotiated.
        (["-tre.iLsfxCIvu", "--compress-level=9"], (b"xxh128 md5", b"zlibx zlib"), "xxh128"),
    ],
)
def test_only_what_the_client_left_open_is_negotiated(
    argv: list[str], lists: tuple[bytes, ...], expected: str
) -> None:
    client = Client(31, argv=["--server", "--sender", *argv, ".", "repo/"])
    d, session = _one_file_session(client)
    assert d.lists == lists and session.checksum.value == expected
    assert bool(d.compat & 0x80) == ("v" in short_options(client.argv)[1])


@pytest.mark.parametrize(
    ("client", "detail"),
    [
        (Client(31, checksums=b"sha1 md4"), b"checksum choice"),
        (Client(30, checksums=b""), b"checksum choice"),
        (
            Client(31, argv=["--server", "--sender", "-trze.iLsfxCIvu", ".", "repo/"],
                   compressors=b"zstd lz4"),
            b"compress choice",
        ),
    ],
)  # fmt: skip
def test_a_failed_negotiation_reaches_the_client(client: Client, detail: bytes) -> None:
    got, out, _ = _refused_after_ok(client.protocol, b"", client.argv, client)
    assert got is Reason.RSYNC_NEGOTIATION
    d = split_output(out, client.protocol)
    assert d.lists and d.seed == 0  # our lists, then a seed, then the error
    assert len(d.messages) == 1 and d.messages[0][0] == Msg.ERROR
    assert detail in d.messages[0][1]


def test_an_oversized_name_list_is_refused() -> None:
    client = Client(31, checksums=b"md5 " * 70)  # 280 bytes: over rsync's 255
    got, _out, _ = _refused_after_ok(31, b"", client.argv, client)
    assert got is Reason.RSYNC_FRAME


def test_argument_flood_is_cut_off_bounded() -> None:
    # APNIC's script: endless NUL-terminated arguments after a valid module.
    session = Session(catalog(make_revision(FILES)))
    session.receive_data(b"@RSYNCD: 31.0\nrepo\n")
    with pytest.raises(LimitExceeded) as exc:
        for _ in range(100_000):
            session.receive_data(b"it's a good idea to limit arrays\x00" * 10)
    assert exc.value.context["limit"] in ("rsync_max_args", "rsync_max_args_bytes")
    assert session._raw.available() < DEFAULT_LIMITS.rsync_max_args_bytes + 1024
    session2 = Session(catalog(make_revision(FILES)))
    session2.receive_data(b"@RSYNCD: 31.0\nrepo\n")
    with pytest.raises(LimitExceeded):
        for _ in range(100):
            session2.receive_data(b"A" * 10_000)  # one 1 MB argument, never terminated
    assert session2._raw.available() < 30_000


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (frame(Msg.DATA, int32(-1)), Reason.RSYNC_FILTER),
        (frame(Msg.DATA, int32(0x7FFFFFFF)), Reason.RSYNC_FILTER),
        (frame(Msg.DATA, b"".join(int32(3) + b"- a" for _ in range(300))), Reason.RSYNC_FILTER),
        (frame(Msg.DATA, int32(17) + b": /.rsync-filter" + b"x" + int32(0)), Reason.RSYNC_FILTER),
        (frame(Msg.DATA, int32(16) + b"merge /etc/passw" + int32(0)), Reason.RSYNC_FILTER),
        (frame(Msg.DATA, int32(4) + b"- a\\" + int32(0)), Reason.RSYNC_FILTER),
        (bytes([0, 0, 0, 7 + 99]), Reason.RSYNC_FRAME),
        (bytes([0xFF, 0xFF, 0xFF, 7]), Reason.RSYNC_FRAME),
        (bytes([3, 0, 0, 7 + 86]) + b"abc", Reason.RSYNC_FRAME),
        (bytes([4, 0, 0, 7 + 33]) + b"\x00\x00\x00\x00", Reason.RSYNC_FRAME),
        (bytes([0, 0, 0, 7 + 86]), Reason.RSYNC_CLIENT_ABORT),
    ],
)
def test_filter_and_frame_refusals(tail: bytes, reason: Reason) -> None:
    got, out, _ = _refused_after_ok(31, tail)
    assert got is reason
    assert split_output(out, 31).messages[-1][0] == Msg.ERROR


def test_interleaved_noops_and_messages_are_fine() -> None:
    rev = make_revision(FILES)
    client = Client(31)
    noise = frame(Msg.NOOP, b"") + frame(Msg.INFO, b"hi\n") + frame(Msg.DATA, b"")
    script = client.greeting() + client.args() + noise + client.filters() + noise
    script += client.request(1) + noise + client.dones()
    session = Session(catalog(rev))
    run(session, script)
    assert session.finished and session.state is State.DONE


def _transfer_refusal(protocol: int, requests: bytes) -> Reason:
    client = Client(protocol)
    rev = make_revision(FILES)
    session = Session(catalog(rev))
    head = client.greeting() + client.args() + client.filters()
    run(session, head)
    with pytest.raises((RemoteProtocolError, LimitExceeded)) as exc:
        run(session, requests)
    assert session.state is State.FAILED
    return exc.value.reason


@pytest.mark.parametrize("protocol", [31, 27])
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: c.request(100), Reason.RSYNC_INDEX),
        (lambda c: c.request(2**31 - 1), Reason.RSYNC_INDEX),
        (lambda c: c.request(4 if c.protocol >= 30 else 3), Reason.RSYNC_INDEX),  # "sub"
        (lambda c: c.request(2, (-1, 0, 0, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (2**31 - 1, 700, 2, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (1, 0, 2, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (1, 700, 17, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (1, 700, 64, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (1, 700, 2, 701)), Reason.RSYNC_SUM_HEAD),
        (lambda c: c.request(2, (1, 1 << 30, 2, 0)), Reason.RSYNC_SUM_HEAD),
        (lambda c: b"".join(c.request(2) for _ in range(3)), Reason.RSYNC_INDEX),
        (lambda c: c.done() + c.done() + c.request(2), Reason.RSYNC_SEQUENCE),
    ],
)
def test_transfer_refusals(protocol: int, make, reason: Reason) -> None:  # type: ignore[no-untyped-def]
    if protocol == 27 and reason is Reason.RSYNC_SEQUENCE:
        # Protocol 27 has one redo phase: two DONEs end the run and the request is read as
        # garbage at the goodbye, which is the same refusal.
        assert _transfer_refusal(protocol, make(Client(protocol))) is Reason.RSYNC_SEQUENCE
        return
    assert _transfer_refusal(protocol, make(Client(protocol))) is reason


def _requests_session(protocol: int, limits: Limits = DEFAULT_LIMITS) -> tuple[Session, Client]:
    client = Client(protocol)
    session = Session(catalog(make_revision(FILES)), limits)
    run(session, client.greeting() + client.args() + client.filters())
    return session, client


@pytest.mark.parametrize("protocol", [31, 30, 27])
def test_requests_in_list_order_allocate_no_per_file_table(protocol: int) -> None:
    """A full sync and a redo of one file: counted with one number, no table per index."""
    session, client = _requests_session(protocol)
    assert session.flist is not None
    regular = [i for i in range(len(session.flist)) if not session.flist.is_dir(i)]
    run(session, b"".join(client.request(i) for i in regular))
    assert session._seen is None and session._first_last == regular[-1]
    run(session, client.done() + client.request(regular[1]))  # the redo phase: counted
    assert session._seen is not None and session.state is State.TRANSFER
    with pytest.raises(LimitExceeded):  # a third time (rsync_max_requests_per_file = 2)
        run(session, client.request(regular[1]))


@pytest.mark.parametrize("protocol", [31, 27])
def test_out_of_order_requests_are_counted_as_asked_before(protocol: int) -> None:
    """Below the highest index asked for in order, a file counts as asked for once: the
    count is never under the truth (here file 2 was skipped, yet its two requests are the
    limit's two)."""
    session, client = _requests_session(protocol)
    assert session.flist is not None
    regular = [i for i in range(len(session.flist)) if not session.flist.is_dir(i)]
    first, skipped, later = regular[0], regular[1], regular[2]
    run(session, client.request(first) + client.request(later) + client.request(skipped))
    assert session.state is State.TRANSFER and session._seen is not None
    with pytest.raises(LimitExceeded):
        run(session, client.request(skipped))
    strict = DEFAULT_LIMITS.override({"rsync_max_requests_per_file": 1})
    session, client = _requests_session(protocol, strict)
    run(session, b"".join(client.request(i) for i in regular))  # in order: all allowed
    with pytest.raises(LimitExceeded):
        run(session, client.done() + client.request(first))


def test_a_frame_longer_than_the_backlog_is_read_whole() -> None:
    """Input stops at MAX_INPUT_BACKLOG (16 KiB), except while a frame is incomplete: a
    client may send frames up to rsync_max_data_frame, and waiting for one that can never
    complete would stall the session."""
    session, client = _requests_session(31)
    assert session.flist is not None
    regular = [i for i in range(len(session.flist)) if not session.flist.is_dir(i)]
    # One request with 2,000 block sums of 20 bytes: a 40 KiB frame.
    payload = client.ndx.encode(regular[0]) + b"\x00\x80" + int32(2000) + int32(700)
    payload += int32(16) + int32(0) + bytes(2000 * 20)
    framed = frame(Msg.DATA, payload)
    session.receive_data(framed[:30000])
    assert session.wants_input  # 30,000 bytes held, beyond the backlog: the frame needs more
    session.receive_data(framed[30000:])
    out = b""
    while more := session.data_to_send():
        out += more
    assert session.files_sent == 1 and session.state is State.TRANSFER
    assert session.wants_input
    session.receive_data(bytes(frame(Msg.DATA, b"")) + client.request(regular[1])[:3])
    assert session.wants_input  # a little input: reading goes on


def test_junk_block_sums_still_get_literal_data() -> None:
    # CVE-2024-12085 shape: s2len=1, junk sums; 100 000 equal weak sums (CVE-2026-70453 shape).
    rev = make_revision(FILES)
    client = Client(31)
    junk = (int32(0x11111111) + b"\x01") * 100_000
    script = client.greeting() + client.args() + client.filters()
    script += client.request(2, (100_000, 700, 1, 0), junk) + client.dones()
    session = Session(catalog(rev))
    out = run(session, script, step=65536)
    assert session.finished
    assert FILES["a.cer"] in split_output(out, 31).stream


def test_sum_bytes_are_capped_per_session() -> None:
    limits = DEFAULT_LIMITS.override({"rsync_max_sum_bytes": 10_000})
    client = Client(31)
    session = Session(catalog(make_revision(FILES)), limits)
    run(session, client.greeting() + client.args() + client.filters())
    with pytest.raises(LimitExceeded):
        run(session, client.request(2, (2000, 700, 2, 0)))


def test_del_stats_are_echoed_and_capped() -> None:
    client = Client(31)
    session = Session(catalog(make_revision(FILES)))
    run(session, client.greeting() + client.args() + client.filters())

    def stats() -> bytes:
        return client.data(client.ndx.encode(-3) + b"".join(varint(v) for v in (1, 2, 3, 4, 5)))

    out = run(session, stats())
    assert out == frame(Msg.DATA, b"\xff\x02\x01\x02\x03\x04\x05")
    with pytest.raises(LimitExceeded) as exc:
        run(session, b"".join(stats() for _ in range(1000)))
    assert exc.value.context["limit"] == "rsync_max_del_stats"


@pytest.mark.parametrize("protocol", [31, 27])
def test_eof_and_garbage_at_goodbye(protocol: int) -> None:
    client = Client(protocol)
    session = Session(catalog(make_revision(FILES)))
    run(session, client.greeting() + client.args() + client.filters() + client.request(2))
    with pytest.raises(RemoteProtocolError) as exc:
        session.receive_data(b"")
    assert exc.value.reason is Reason.RSYNC_EOF
    session = Session(catalog(make_revision(FILES)))
    phases = {27: 2, 30: 3, 31: 3}[protocol]
    run(session, client.greeting() + client.args() + client.filters())
    c2 = Client(protocol)
    garbage = c2.data(int32(7) if protocol < 30 else b"\x05")
    with pytest.raises(RemoteProtocolError) as exc:
        run(session, b"".join(c2.done() for _ in range(phases)) + garbage)
    assert exc.value.reason is Reason.RSYNC_SEQUENCE


def test_missing_path_sends_the_rsync_error_and_an_empty_list() -> None:
    client = Client(31, argv=["--server", "--sender", "-tre.iLsfxCIvu", ".", "repo/nonexistent"])
    session = Session(catalog(make_revision(FILES)))
    out = run(session, client.greeting() + client.args() + client.filters())
    d = split_output(out, 31)
    assert d.messages[0][0] == Msg.ERROR_XFER and b"link_stat" in d.messages[0][1]
    assert d.stream == b"\x00\x00"  # varint flags: the end, then io_error 0
    assert session.finished
    assert session.next_event() is not None


def test_filters_shape_the_list() -> None:
    rules = [b"+ */", b"+ *.roa", b"- *"]
    client = Client(31, rules=rules)
    session = Session(catalog(make_revision(FILES)))
    run(session, client.greeting() + client.args() + client.filters())
    assert session.flist is not None
    assert session.revision is not None
    names = [session.revision.list_name(session.flist, i) for i in range(len(session.flist))]
    assert names == [b".", b"sub", b"sub/b.roa", b"sub/deep"]


def test_client_that_never_reads_costs_no_output_memory() -> None:
    big = make_revision({"big.crl": b"x" * 4_000_000})
    client = Client(31)
    session = Session(catalog(big))
    session.receive_data(client.greeting() + client.args() + client.filters() + client.request(1))
    first = session.data_to_send(65536)
    assert len(first) < 200_000
    # Nothing more is produced until asked: the pending output is a lazy iterator.
    assert len(session._out) == 0 and len(session._data_out) < 65536


# --- fuzzing: only the project's errors escape --------------------------------------------


PREFIXES = {
    "greeting": b"",
    "module": b"@RSYNCD: 31.0\n",
    "args": b"@RSYNCD: 31.0\nrepo\n",
    "filters": b"@RSYNCD: 31.0\nrepo\n" + Client(31).args(),
    "transfer": b"@RSYNCD: 31.0\nrepo\n" + Client(31).args() + Client(31).filters(),
    "transfer27": b"@RSYNCD: 27.0\nrepo\n" + Client(27).args() + Client(27).filters(),
}
REVISION = make_revision(FILES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(PREFIXES)),
    st.binary(max_size=300),
    st.lists(st.integers(1, 50), max_size=10),
)
def test_fuzz_only_project_errors_escape(prefix: str, tail: bytes, cuts: list[int]) -> None:
    session = Session(catalog(REVISION))
    data = PREFIXES[prefix] + tail
    pieces, pos = [], 0
    for c in cuts:
        pieces.append(data[pos : pos + c])
        pos += c
    pieces.append(data[pos:])
    try:
        for piece in pieces:
            session.receive_data(piece)
            session.data_to_send()
        session.receive_data(b"")
        session.data_to_send()
    except RpkiRepoError as exc:
        assert isinstance(exc, (RemoteProtocolError, LimitExceeded))
        assert session.state is State.FAILED


def test_oversized_xname_negative_index_and_wide_varints() -> None:
    rev = make_revision(FILES)

    def refused(tail: bytes) -> Reason:
        client = Client(31)
        session = Session(catalog(rev))
        run(session, client.greeting() + client.args() + client.filters())
        with pytest.raises((RemoteProtocolError, LimitExceeded)) as exc:
            run(session, tail)
        return exc.value.reason

    w = NdxWriter()
    # iflags with XNAME_FOLLOWS and a 0x7FFF-byte name (rsync caps it at MAXPATHLEN).
    xname = w.encode(2) + bytes([0x00, 0x10]) + bytes([0xFF, 0xFF]) + b"x" * 0x7FFF
    assert refused(Client(31).data(xname)) is Reason.RSYNC_FRAME
    # ndx -2 (NDX_FLIST_EOF: incremental recursion, which we never offer).
    assert refused(Client(31).data(NdxWriter().encode(-2))) is Reason.RSYNC_INDEX
    # DEL_STATS whose varints claim more than 4 extra bytes.
    wide = NdxWriter().encode(-3) + b"\xfc" + b"\x00" * 8
    assert refused(Client(31).data(wide)) is Reason.RSYNC_FRAME


def test_unknown_item_flags_are_echoed_not_trusted() -> None:
    # A non-transfer item with odd flag bits: echoed back (the client only logs it), no data.
    rev = make_revision(FILES)
    client = Client(31)
    session = Session(catalog(rev))
    run(session, client.greeting() + client.args() + client.filters())
    out = run(session, client.data(NdxWriter().encode(2) + bytes([0x05, 0x02])))
    assert out == frame(Msg.DATA, b"\x03\x05\x02")
    assert session.files_sent == 0


def _valid_script(protocol: int) -> bytes:
    client = Client(protocol, argv=["--server", "--sender", "-trze.iLsfxCIvu", ".", "repo/"])
    script = client.greeting() + client.args() + client.filters()
    script += client.request(2, (1, 700, 2, 0), int32(5) + b"ab")
    script += client.request(5) + client.dones()
    return script


SCRIPTS = {p: _valid_script(p) for p in (31, 30, 27)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([31, 30, 27]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.booleans()), max_size=4),
    st.integers(1, 64),
)
def test_fuzz_mutated_sessions(
    protocol: int, edits: list[tuple[int, int, bool]], step: int
) -> None:
    data = bytearray(SCRIPTS[protocol])
    for pos, value, insert in edits:
        pos %= len(data)
        if insert:
            data.insert(pos, value)
        else:
            data[pos] = value
    session = Session(catalog(REVISION))
    try:
        run(session, bytes(data), step)
        session.receive_data(b"")
        session.data_to_send()
    except RpkiRepoError as exc:
        assert isinstance(exc, (RemoteProtocolError, LimitExceeded))
        assert session.state is State.FAILED
    else:
        assert session.state is State.DONE


def test_only_the_default_compression_level_is_cached() -> None:
    rev = make_revision(FILES)
    pos = rev.find(b"a.cer")
    assert pos is not None
    for level in range(1, 10):
        rev.response_body(pos, Checksum.MD5, level, rev.seed)
    assert list(rev._deflated) == [pos]
    stream = rev.response_body(pos, Checksum.MD5, 9, rev.seed)
    assert stream.endswith(hashlib.md5(FILES["a.cer"]).digest())


def test_the_deflate_cache_is_bounded_and_least_recently_used_goes() -> None:
    files = {f"f{i}.cer": bytes([i]) * 1000 + bytes(range(256)) for i in range(20)}
    rev = make_revision(files)
    one = len(rev.deflated(rev.find(b"f0.cer") or 0, 6))
    rev._deflated.clear()
    rev._deflated_bytes = 0
    rev.deflate_cache_bytes = 8 * one + one // 2
    for i in range(20):
        rev.deflated(rev.find(f"f{i}.cer".encode()) or 0, 6)
        rev.deflated(rev.find(b"f0.cer") or 0, 6)  # kept warm
    assert rev._deflated_bytes <= rev.deflate_cache_bytes
    assert 6 <= len(rev._deflated) <= 9
    assert rev.find(b"f1.cer") not in rev._deflated
    assert rev.find(b"f0.cer") in rev._deflated and rev.find(b"f19.cer") in rev._deflated


def test_costly_filters_are_refused_with_a_message() -> None:
    limits = DEFAULT_LIMITS.override({"rsync_max_filter_work": 1000})
    client = Client(31, rules=[b"- *[ab]?*a*/*.x"] * 50)
    session = Session(catalog(make_revision(FILES)), limits)
    out = session.data_to_send()
    with pytest.raises(LimitExceeded) as exc:
        session.receive_data(client.greeting() + client.args() + client.filters())
    out += session.data_to_send()
    assert exc.value.context["limit"] == "rsync_max_filter_work"
    assert b"too costly" in split_output(out, 31).messages[-1][1]


def _deferred(
    client: Client, limits: Limits = DEFAULT_LIMITS, rev: Revision | None = None
) -> tuple[Session, bytes]:
    session = Session(catalog(rev or make_revision(FILES)), limits, defer_lists=True)
    out = run(session, client.greeting() + client.args() + client.filters())
    return session, out


def test_a_deferred_list_is_built_elsewhere_and_the_session_goes_on() -> None:
    """With defer_lists, the session stops at an unbuilt list until the I/O layer built it
    (in a worker thread here); the output is byte for byte the undeferred session's."""
    rev = make_revision(FILES)
    client = Client(31)
    session, head = _deferred(client, rev=rev)
    assert session.list_wanted and session.flist is None and session.state is State.FILTERS
    session.receive_data(client.request(2))  # input meanwhile waits
    assert session.data_to_send() == b"" and session.list_wanted
    with ThreadPoolExecutor(1) as pool:
        flist = pool.submit(session.build_list).result()
    session.list_built(flist)
    assert not session.list_wanted and session.state is State.TRANSFER
    out = head + run(session, client.dones())
    assert session.state is State.DONE
    plain_client = Client(31)
    plain = Session(catalog(make_revision(FILES)))
    want = run(plain, plain_client.greeting() + plain_client.args() + plain_client.filters())
    want += run(plain, plain_client.request(2) + plain_client.dones())
    assert split_output(out, 31).stream == split_output(want, 31).stream
    # The next session with the same options finds the list built: nothing to defer.
    again, _ = _deferred(Client(31), rev=rev)
    assert not again.list_wanted and again.flist is flist


def test_a_deferred_list_that_costs_too_much_fails_the_session_with_a_message() -> None:
    limits = DEFAULT_LIMITS.override({"rsync_max_filter_work": 1000})
    session, out = _deferred(Client(31, rules=[b"- *[ab]?*a*/*.x"] * 50), limits)
    assert session.list_wanted
    with pytest.raises(LimitExceeded) as exc:
        session.build_list()
    session.list_failed(exc.value)
    out += session.data_to_send()
    assert session.state is State.FAILED and not session.list_wanted
    assert b"too costly" in split_output(out, 31).messages[-1][1]


def test_the_list_built_at_load_is_never_evicted() -> None:
    from rpkirepo.rsync._filters import FilterSet
    from rpkirepo.rsync._model import COMMON_FLIST

    rev = make_revision(FILES)
    rev.max_flist_cache = 3
    common = rev.file_list(COMMON_FLIST, FilterSet(), 10**6)
    for proto in (27, 30, 31):
        for checksum in (False, True):
            opts = replace(COMMON_FLIST, protocol=proto, checksum=checksum, varint_flags=False)
            rev.file_list(opts, FilterSet(), 10**6)
    assert len(rev._flists) == 3 and rev.cached_file_list(COMMON_FLIST) is common
