"""Unit tests of the rsync daemon's codecs: integers, indexes, frames, MD4, filters, arguments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.rsync import FilterSet, parse_server_args
from rpkirepo.rsync._md4 import md4
from rpkirepo.rsync._model import deflate_tokens
from rpkirepo.rsync._wire import (
    Buffer,
    Msg,
    NdxReader,
    NdxWriter,
    NeedData,
    frame,
    frame_header,
    longint,
    read_varint,
    read_varlong,
    varint,
    varlong,
    vstring,
)

# --- integers (rsync-wire §2 check values) ---


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (0x7F, "7f"), (0x98, "8098"), (511, "81ff"), (0x4000, "c00040")],
)
def test_varint_vectors(value: int, encoded: str) -> None:
    assert varint(value).hex() == encoded
    buf = Buffer()
    buf.feed(bytes.fromhex(encoded))
    assert read_varint(buf) == value


@pytest.mark.parametrize(
    ("value", "min_bytes", "encoded"),
    [
        (4096, 3, "000010"),
        (1700000000, 4, "6500f153"),
        (0, 3, "000000"),
        (2**40, 3, "e10000000000"),
    ],
)
def test_varlong_vectors(value: int, min_bytes: int, encoded: str) -> None:
    assert varlong(value, min_bytes).hex() == encoded
    buf = Buffer()
    buf.feed(bytes.fromhex(encoded))
    assert read_varlong(buf, min_bytes) == value


@given(st.integers(0, 2**31 - 1))
def test_varint_round_trip(n: int) -> None:
    buf = Buffer()
    buf.feed(varint(n))
    assert read_varint(buf) == n and buf.available() == 0


@given(st.integers(0, 2**62), st.sampled_from([3, 4]))
def test_varlong_round_trip(n: int, min_bytes: int) -> None:
    buf = Buffer()
    buf.feed(varlong(n, min_bytes))
    assert read_varlong(buf, min_bytes) == n and buf.available() == 0


def test_overlong_varint_is_refused() -> None:
    buf = Buffer()
    buf.feed(b"\xfc\x00\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError) as exc:
        read_varint(buf)
    assert exc.value.reason is Reason.RSYNC_FRAME


def test_longint() -> None:
    assert longint(5) == b"\x05\x00\x00\x00"
    assert longint(2**31) == b"\xff\xff\xff\xff" + (2**31).to_bytes(8, "little")


@given(st.lists(st.integers(-100, 2**31 - 1).filter(lambda n: n not in (0,) or True), max_size=50))
def test_ndx_round_trip(values: list[int]) -> None:
    values = [v for v in values if v != -1 and not -1 < v < 0]
    w, r, buf = NdxWriter(), NdxReader(), Buffer()
    for v in values:
        buf.feed(w.encode(v))
    assert [r.decode(buf) for _ in values] == values


def test_ndx_known_bytes() -> None:
    w = NdxWriter()
    assert w.encode(-1) == b"\x00"
    assert w.encode(0) == b"\x01"
    assert w.encode(5) == b"\x05"
    assert w.encode(-3) == b"\xff\x02"
    assert w.encode(5 + 0x1234) == b"\xfe\x12\x34"


def test_buffer_rollback() -> None:
    buf = Buffer()
    buf.feed(b"\x01\x02")
    with pytest.raises(NeedData):
        buf.i32()
    buf.rollback()
    buf.feed(b"\x03\x04")
    assert buf.i32() == 0x04030201


def test_frames_and_vstring() -> None:
    f = frame(Msg.ERROR, b"abc")
    assert f == bytes([3, 0, 0, 7 + 3]) + b"abc"
    assert frame_header(int.from_bytes(f[:4], "little")) == (3, 3)
    assert vstring(b"x" * 5) == b"\x05xxxxx"
    assert vstring(b"x" * 300)[:2] == bytes([0x81, 300 & 0xFF])


# --- MD4 (RFC 1320 appendix A.5) ---


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_rfc1320_vectors(message: bytes, digest: str) -> None:
    assert md4(message).hex() == digest


def test_deflate_tokens_are_raw_deflate_pieces() -> None:
    import zlib

    data = bytes(range(256)) * 300
    stream = deflate_tokens(data, 6)
    assert stream[-1] == 0
    body, i = bytearray(), 0
    while stream[i] != 0:
        assert stream[i] & 0xC0 == 0x40
        n = (stream[i] & 0x3F) << 8 | stream[i + 1]
        assert 0 < n <= 16383
        body += stream[i + 2 : i + 2 + n]
        i += 2 + n
    d = zlib.decompressobj(-15)
    assert d.decompress(bytes(body) + b"\x00\x00\xff\xff") == data


# --- filters ---


def fs(*rules: str, protocol: int = 31) -> FilterSet:
    return FilterSet.from_wire([r.encode() for r in rules], protocol)


RPKI = ("+ */", "+ *.cer", "+ *.roa", "+ *.mft", "- *")


@pytest.mark.parametrize(
    ("rules", "path", "is_dir", "included"),
    [
        (RPKI, "a.cer", False, True),
        (RPKI, "sub/x/a.roa", False, True),
        (RPKI, "a.txt", False, False),
        (RPKI, "sub", True, True),
        (("- .*",), ".hidden", False, False),
        (("- .*",), "a/.hidden", False, False),
        (("- .*",), "a.b", False, True),
        (("- /top.cer",), "top.cer", False, False),
        (("- /top.cer",), "d/top.cer", False, True),
        (("- d/*.cer",), "x/d/a.cer", False, False),
        (("- d/*.cer",), "x/d/e/a.cer", False, True),
        (("- d/**",), "d/e/f", False, False),
        (("- d/***",), "d", True, False),
        (("- d/***",), "d/e", False, False),
        (("- *.[ch]",), "x.c", False, False),
        (("- *.[!ch]",), "x.c", False, True),
        (("- a?c",), "abc", False, False),
        (("- a?c",), "a/c", False, True),
        (("- dir/",), "dir", False, True),
        (("- dir/",), "dir", True, False),
        (("-! */",), "f", False, False),
        (("-! */",), "d", True, True),
        (("+ a", "!", "- a"), "a", False, False),
        (("-p .~tmp~/",), ".~tmp~", True, False),
        (("-r *",), "x", False, True),  # receiver-side rule: the sender skips it
        (("- \\*",), "*", False, False),
        (("- \\*",), "a", False, True),
    ],
)
def test_filter_matching(rules: tuple[str, ...], path: str, is_dir: bool, included: bool) -> None:
    assert fs(*rules).included(path.encode(), is_dir) is included


def test_protocol_27_bare_excludes() -> None:
    rules = fs("+ *.cer", "*", protocol=27)
    assert rules.included(b"a.cer", False)
    assert not rules.included(b"a.roa", False)


@pytest.mark.parametrize(
    "rule",
    [": /.rsync-filter", "merge /etc/passwd", ". /etc/passwd", "- a\\", "-/ x", "-e x",
     "+", "- ", "P x", "- [abc", "-C", "-x y", "- a\x01"],
)  # fmt: skip
def test_refused_filter_rules(rule: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        fs(rule)
    assert exc.value.reason is Reason.RSYNC_FILTER


def test_pathological_pattern_is_linear() -> None:
    import time

    rules = fs("- " + "*a" * 200 + "b")
    started = time.perf_counter()
    assert rules.included(b"a" * 250, False)
    assert time.perf_counter() - started < 2.0


# --- server arguments (rsync-wire §6) ---


def args(*a: str, protocol: int = 31):  # type: ignore[no-untyped-def]
    return parse_server_args([x.encode() for x in a], protocol)


@pytest.mark.parametrize(
    "argv",
    [
        ["--server", "--sender", "-tre.iLsfxCIvu", "--timeout=30", ".", "repo/"],
        ["--server", "--sender", "-trze.iLsfxCIvu", ".", "repo/"],
        ["--server", "--sender", "-de.LsfxCIvu", ".", "repo/"],
        ["--server", "--sender", "-logDtprze.iLsfxCIvu", "--numeric-ids", ".", "repo/"],
        ["--server", "--sender", "-r", "-t", "-O", "--max-size=8000000", "--min-size=100",
         ".", "repo"],
        ["--server", "--sender", "-tre.iLsfxCIvu", "--max-size=20MB", "--timeout=15", ".", "repo/"],
        ["--server", "--sender", "-ltrzce.iLsfxCIvu", "--compress-level=9",
         "--checksum-seed=7", ".", "r/"],
        ["--server", "--sender", "-tre.iLsfxCIvu", "--delete-during", "--list-only", ".", "repo/"],
    ],
)  # fmt: skip
def test_rp_argument_lists_are_accepted(argv: list[str]) -> None:
    parsed = args(*argv)
    assert parsed.path == argv[-1].encode()


def test_argument_effects() -> None:
    a = args("--server", "--sender", "-ogtrzce.iLsfxCIvu", "--compress-level=3",
             "--checksum-seed=9", "--timeout=40", ".", "repo/x")  # fmt: skip
    assert (a.recursive, a.uid, a.gid, a.compress, a.checksum) == (True,) * 5
    assert (a.compress_level, a.checksum_seed, a.timeout) == (3, 9, 40)
    assert a.client_info == ".iLsfxCIvu" and a.path == b"repo/x"


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--server", "-tre.iLsfxCIvu", ".", "repo/"], Reason.RSYNC_READ_ONLY),
        (["--server", "--sender", "-s", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "-rH", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "-rR", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--files-from=-", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--iconv=x", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--checksum-choice=xxh3", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--compress-choice=zstd", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--compress-threads=256", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--max-size=99999999999999999999999", ".", "repo/"],
         Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--timeout=x", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "--remove-source-files", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "-r", ".", "repo/", "repo/x"], Reason.RSYNC_PATH),
        (["--server", "--sender", "-r", "."], Reason.RSYNC_PATH),
        (["--sender", "--server", "-r", ".", "repo/"], Reason.RSYNC_ARGUMENT),
        (["--server", "--sender", "-r", "repo/"], Reason.RSYNC_ARGUMENT),
    ],
)  # fmt: skip
def test_refused_arguments(argv: list[str], reason: Reason) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        args(*argv)
    assert exc.value.reason is reason


def test_checksum_choice_md5_or_xxh128_at_30() -> None:
    for name in ("md5", "xxh128"):
        got = args("--server", "--sender", "-r", f"--checksum-choice={name}", ".", "r/")
        assert got.checksum_choice == name
        with pytest.raises(RemoteProtocolError):
            args("--server", "--sender", "-r", f"--checksum-choice={name}", ".", "r/", protocol=27)
    assert (
        args("--server", "--sender", "-rz", "--new-compress", ".", "r/").compress_choice == "zlibx"
    )
    assert (
        args("--server", "--sender", "-rz", "--old-compress", ".", "r/").compress_choice == "zlib"
    )
    assert args("--server", "--sender", "-rz", ".", "r/").compress_choice == ""


# --- names a revision may hold (rsync-wire §8 output safety) ---


@pytest.mark.parametrize(
    "name",
    [b"../x", b"a/../b", b"/etc/passwd", b"a//b", b"./a", b"a/", b"x" * 256, b"a\x01b",
     b"a\\b", b"a\x7fb", b"d/" * 600 + b"f"],
)  # fmt: skip
def test_unsafe_names_are_refused_at_load(name: bytes) -> None:
    from rpkirepo.errors import StorageError
    from rpkirepo.rsync._model import validate_name

    with pytest.raises(StorageError) as exc:
        validate_name(name)
    assert exc.value.reason is Reason.RSYNC_BAD_NAME


def test_safe_names_pass() -> None:
    from rpkirepo.rsync._model import validate_name

    for name in (b"a.cer", b"-x.cer", b"..x", b"x" * 255, b"a/b/c.roa", b"sp ace.cer"):
        validate_name(name)


def _built(entries: list[tuple[bytes, bool]]) -> tuple[object, ...]:
    from rpkirepo.rsync import RevisionBuilder

    b = RevisionBuilder("r", max_entries=1000, seed=1)
    b.set_root_mtime(5)
    for path, is_dir in entries:
        if is_dir:
            b.add_dir(path, len(path))
        else:
            b.add_file(path, len(path), path * 3)
    r = b.build()
    return (r.names, list(r.ends), list(r.sizes), list(r.mtimes), r.dirs, r.tails,
            list(r.subtree), r.file_count, r.total_size)  # fmt: skip


@given(st.randoms(use_true_random=False))
def test_the_builder_sorts_what_does_not_come_in_order(rng) -> None:  # type: ignore[no-untyped-def]
    """The load adds entries in protocol-29 order and they are packed as they come; any
    other order (parents first) gives the same revision."""
    dirs = [b"a", b"a/b", b"a-c", b"z", b"a/b/d"]
    files = [b"a.cer", b"a/x.roa", b"a/b/y.mft", b"a/b.crl", b"a-c/q", b"z/-1", b"top"]
    # Per directory its files, then each subdirectory ("a-c/" < "a/") and its subtree.
    ordered = [
        (b"a.cer", False), (b"top", False),
        (b"a-c", True), (b"a-c/q", False),
        (b"a", True), (b"a/b.crl", False), (b"a/x.roa", False),
        (b"a/b", True), (b"a/b/y.mft", False), (b"a/b/d", True),
        (b"z", True), (b"z/-1", False),
    ]  # fmt: skip
    shuffled = [(d, True) for d in dirs] + [(f, False) for f in files]
    rng.shuffle(shuffled)
    shuffled.sort(key=lambda e: e[0].count(b"/") + (0 if e[1] else 0.5))  # parents first
    assert _built(shuffled) == _built(ordered)


@pytest.mark.parametrize(
    "entries",
    [
        [(b"a", False), (b"a", False)],
        [(b"d", True), (b"d/x", False), (b"d/x", False)],
        [(b"a", False), (b"a", True)],  # a file and a directory of the same name
        [(b"a", True), (b"a", False)],
        [(b"a", True), (b"a", True)],
    ],
)
def test_a_name_given_twice_is_refused(entries: list[tuple[bytes, bool]]) -> None:
    from rpkirepo.errors import StorageError

    with pytest.raises(StorageError) as exc:
        _built(entries)
    assert exc.value.reason is Reason.RSYNC_BAD_NAME and "duplicate" in exc.value.detail


@pytest.mark.parametrize(
    "extra",
    ["--compress-choice=zlibx", "--compress-choice=zlib", "--new-compress", "--old-compress"],
)
def test_naming_a_compressor_means_compressing(extra: str) -> None:
    assert args("--server", "--sender", "-tre.iLsfxCIvu", extra, ".", "repo/").compress
    assert not args("--server", "--sender", "-tre.iLsfxCIvu", ".", "repo/").compress


@given(
    st.sampled_from(["*", "*.cer", ".*", "a.roa", "*.", "x*", "*/", ".~tmp~/"]),
    st.text(alphabet="ab.cer~tmx", min_size=1, max_size=12),
    st.booleans(),
)
def test_fast_paths_agree_with_the_automaton(pattern: str, name: str, is_dir: bool) -> None:
    from dataclasses import replace

    from rpkirepo.rsync import parse_rule

    rule = parse_rule(f"- {pattern}".encode(), 31)
    assert rule is not None and rule.fast  # these shapes take a fast path
    slow = replace(rule, fast="")
    for path in (name, f"d/{name}", f"d/e/{name}"):
        assert rule.matches(path.encode(), is_dir) == slow.matches(path.encode(), is_dir)


def test_filter_work_is_budgeted() -> None:
    from rpkirepo.errors import LimitExceeded

    rules = fs(*(["- *[ab]?*a*/*.x"] * 256))
    with pytest.raises(LimitExceeded) as exc:
        budget = [1_000_000]
        for i in range(10_000):
            rules.included(f"ca{i}/some-long-file-name-{i}.roa".encode(), False, budget)
    assert exc.value.context["limit"] == "rsync_max_filter_work"
    cheap = fs("+ */", "+ *.roa", "- *")
    budget = [10_000]
    for i in range(3_000):
        cheap.included(f"ca{i}/x{i}.roa".encode(), False, budget)
    assert budget[0] > 0
