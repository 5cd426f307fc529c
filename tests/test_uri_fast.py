"""RsyncUri's directory-prefix cache: construction decides exactly what it decided before.

The oracle below is a verbatim copy of the constructor and the helpers it used before the cache
(``__post_init__``, ``_slow_parse``, ``_check_host``, ...).  Every input is parsed by both, with
the cache cold and warmed by a valid sibling sharing the input's directory prefix, and the
outcomes must be equal: the same fields for an accepted URI, the same exception class, reason,
detail and context for a refused one.
"""

from __future__ import annotations

import ast
import pickle
import re
import string
import threading
import warnings
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, fields, replace
from pathlib import Path
from typing import Final, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpkirepo import uri as uri_module
from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.uri import RsyncUri

# --- the oracle: RsyncUri construction as it was before the cache ------------------------------

_PCHAR: Final = frozenset(string.ascii_letters + string.digits + "-._~!$&()*+,;=:@%")
_HOST_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-.")
_ABSOLUTE_MAX_LENGTH: Final = 65536


def _fail(reason: Reason, detail: str, uri: str) -> RemoteProtocolError:
    shown = uri if len(uri) <= 200 else uri[:200] + "..."
    return RemoteProtocolError(
        reason, detail, uri=shown.encode("ascii", "backslashreplace").decode()
    )


_SEG: Final = r"[A-Za-z0-9\-_~!$&()*+,;=:@%][A-Za-z0-9\-._~!$&()*+,;=:@%]*"
_FAST_RSYNC: Final = re.compile(
    rf"rsync://(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{{1,5}}))?"
    rf"/(?P<module>{_SEG})(?P<slash>/)?(?P<path>(?:{_SEG}/)*(?:{_SEG})?)"
)
_FAST_SEGMENT: Final = re.compile(_SEG)


def _validate_segment(segment: str, *, what: str = "segment", uri: str = "") -> None:
    if _FAST_SEGMENT.fullmatch(segment) is not None:
        return
    if segment == "":
        raise _fail(Reason.URI_EMPTY_SEGMENT, f"empty {what}", uri or segment)
    if segment in (".", ".."):
        raise _fail(Reason.URI_DOT_SEGMENT, f"{what} is a dot segment", uri or segment)
    if segment[0] == ".":
        raise _fail(Reason.URI_HIDDEN_SEGMENT, f"{what} starts with a dot", uri or segment)
    for ch in segment:
        if ch not in _PCHAR:
            raise _fail(
                Reason.URI_BAD_CHARACTER,
                f"character {ch!r} not allowed in a {what}",
                uri or segment,
            )


def _check_common(uri: str, scheme: str, max_length: int) -> str:
    if len(uri) > min(max_length, _ABSOLUTE_MAX_LENGTH):
        raise _fail(Reason.URI_TOO_LONG, f"longer than {max_length} characters", uri)
    prefix = scheme + "://"
    if not uri.startswith(prefix):
        raise _fail(Reason.URI_SCHEME, f"not a {scheme}:// URI", uri)
    for ch in uri:
        if not (0x21 <= ord(ch) <= 0x7E):
            raise _fail(Reason.URI_BAD_CHARACTER, "control, space or non-ASCII character", uri)
    return uri[len(prefix) :]


def _check_host(host: str, port_text: str | None, uri: str) -> tuple[str, int | None]:
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or not (1 <= int(port_text) <= 65535):
            raise _fail(Reason.URI_BAD_HOST, "bad port", uri)
        port = int(port_text)
    if host == "":
        raise _fail(Reason.URI_BAD_HOST, "empty host", uri)
    if host in (".", "..") or host.startswith(".") or ".." in host:
        raise _fail(Reason.URI_DOT_SEGMENT, "dot segment in host", uri)
    if any(ch not in _HOST_CHARS for ch in host) or host.startswith("-") or host.endswith("."):
        raise _fail(Reason.URI_BAD_HOST, "host is not a DNS name or IPv4 address", uri)
    return host.lower(), port


def _split_authority(rest: str, uri: str) -> tuple[str, int | None, str, bool]:
    authority, slash, path = rest.partition("/")
    host, colon, port_text = authority.partition(":")
    h, p = _check_host(host, port_text if colon else None, uri)
    return h, p, path, bool(slash)


def _split_path(path: str, uri: str) -> tuple[tuple[str, ...], bool]:
    if path == "":
        return (), True
    is_dir = path.endswith("/")
    body = path[:-1] if is_dir else path
    segments = tuple(body.split("/"))
    for seg in segments:
        _validate_segment(seg, uri=uri)
    return segments, is_dir


def _slow_parse(uri: str) -> tuple[str, int | None, str, str]:
    rest = _check_common(uri, "rsync", _ABSOLUTE_MAX_LENGTH)
    _host, _port, path, slash = _split_authority(rest, uri)
    if not slash:
        raise _fail(Reason.URI_SYNTAX, "no module", uri)
    module, _, sub = path.partition("/")
    _validate_segment(module, what="module", uri=uri)
    _split_path(sub, uri)
    raise _fail(Reason.URI_SYNTAX, "not a valid rsync URI", uri)


def _oracle_fields(uri: object) -> tuple[str, int | None, str, str]:
    """The old ``__post_init__``: (host, port, module, path) or the old refusal."""
    if not isinstance(uri, str):
        raise _fail(Reason.URI_SYNTAX, "not a string", repr(uri))
    m = _FAST_RSYNC.fullmatch(uri) if len(uri) <= _ABSOLUTE_MAX_LENGTH else None
    if m is not None and ".." not in m["host"] and not m["host"].endswith("."):
        port = m["port"]
        host, port_num = _check_host(m["host"], port, uri) if port else (m["host"].lower(), None)
        module, path = m["module"], m["path"]
    else:
        host, port_num, module, path = _slow_parse(uri)
    return host, port_num, module, path.rstrip("/")


# --- comparing outcomes ------------------------------------------------------------------------

Outcome = tuple[object, ...]


def _refusal(exc: Exception) -> Outcome:
    if isinstance(exc, RemoteProtocolError):
        return ("refused", type(exc), exc.reason, exc.detail, exc.context, str(exc))
    return ("crashed", type(exc), str(exc))


def _oracle(text: object, max_length: int | None = None) -> Outcome:
    try:
        # RsyncUri.parse: the configured limit first (its text is a str when this applies).
        if max_length is not None and len(cast(str, text)) > max_length:
            detail = f"longer than {max_length} characters"
            raise _fail(Reason.URI_TOO_LONG, detail, cast(str, text))
        return ("ok", text, *_oracle_fields(text))
    except Exception as exc:
        return _refusal(exc)


def _new(text: object, max_length: int | None = None) -> Outcome:
    try:
        text_ = cast(str, text)  # non-strings too: refusing them is part of the behaviour
        u = RsyncUri(text_) if max_length is None else RsyncUri.parse(text_, max_length=max_length)
        return ("ok", u.uri, u.host, u.port, u.module, u.path)
    except Exception as exc:
        return _refusal(exc)


def _prefix(text: str) -> str:
    return text[: text.rfind("/") + 1]


def _check(text: object) -> None:
    """Same outcome cold, warm (a valid sibling seen first), and through parse()."""
    expected = _oracle(text)
    uri_module._dir_cache.clear()
    assert _new(text) == expected, ("cold", text)
    # Now that the cache may hold this URI's prefix: the same again, and for its siblings.
    assert _new(text) == expected, ("warm", text)
    if isinstance(text, str):
        prefix = _prefix(text)
        for sibling in (prefix + "sibling.roa", prefix, prefix + "x"):
            assert _new(sibling) == _oracle(sibling), ("sibling", sibling)
        assert _new(text) == expected, ("after siblings", text)
        for limit in (DEFAULT_LIMITS.max_uri_length, 70, 10 * _ABSOLUTE_MAX_LENGTH):
            assert _new(text, limit) == _oracle(text, limit), ("parse", text, limit)


# --- every rsync URI the other tests use -------------------------------------------------------

_URI_IN_TEXT: Final = re.compile(r"rsync://[^\s\"'<>`]*")


def _strings_in_tests() -> Iterator[str]:
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        source = path.read_text(encoding="utf-8")
        yield from _URI_IN_TEXT.findall(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old escape sequences in someone else's file
            tree = ast.parse(source)
        for node in ast.walk(tree):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and "rsync://" in value:
                yield value
                yield from _URI_IN_TEXT.findall(value)


TEST_STRINGS: Final = sorted(set(_strings_in_tests()))


def test_the_other_tests_supply_uris() -> None:
    assert len(TEST_STRINGS) > 50
    assert "rsync://h/m/../../x" in TEST_STRINGS  # a literal key of test_uri.BAD_RSYNC


@pytest.mark.parametrize("text", TEST_STRINGS)
def test_uris_used_by_other_tests(text: str) -> None:
    _check(text)
    # And with each such directory prefix known, every hostile last segment.
    prefix = _prefix(text)
    for last in HOSTILE_LAST:
        _check_warm(prefix, last)


# --- generated URIs ----------------------------------------------------------------------------

HOSTILE_LAST: Final = (
    "",
    ".",
    "..",
    "...",
    ".hidden",
    "%",
    "%2e%2e",
    "a%00b",
    "\x00",
    "a\x00",
    "a b",
    "a\tb",
    "a\nb",
    "a\\b",
    "a?b",
    "a#b",
    "a'b",
    'a"b',
    "a<b>",
    "caf\u00e9.roa",
    "\u0130",
    "\uff41.roa",
    "\U0001f600",
    "a/",
    "a//",
    "a/..",
    "-",
    "~",
    "x.roa",
    "A" * 600,
    "z" * 2100,
)


def _check_warm(prefix: str, last: str) -> None:
    """``prefix + last`` right after a valid URI with the same prefix filled the cache."""
    uri_module._dir_cache.clear()
    warm = prefix + "valid-name.roa"
    assert _new(warm) == _oracle(warm), warm
    text = prefix + last
    assert _new(text) == _oracle(text), (prefix, last)


_SEG_ALPHABET: Final = string.ascii_letters + string.digits + "-._~!$&()*+,;=:@%" + "/\\ ?#'\x00é"

schemes = st.sampled_from(["rsync://"] * 8 + ["RSYNC://", "rsync:/", "rsync:", "https://", ""])
hosts = st.one_of(
    st.sampled_from(
        [
            "h",
            "H",
            "localhost",
            "LocalHost",
            "rpki.ripe.net",
            "RPKI.Example.NET",
            "10.0.0.1",
            "xn--bcher-kva.example",
            "a-b",
            "",
            ".",
            "..",
            "a..b",
            ".h",
            "h.",
            "-h",
            "h-",
            "h_x",
            "h%41",
            "h\x00",
            "h\u00e9",
            "\u0130",
            "[::1]",
            "[2001:db8::1]",
            "::1",
            "user@h",
            "h" * 300,
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + ".-_:[]", max_size=12),
)
ports = st.one_of(
    st.none(),
    st.sampled_from(
        ["0", "00", "1", "873", "00873", "65535", "65536", "99999", "000000", "", "+1", " 1"]
    ),
    st.sampled_from(["\uff18\uff17\uff13", "\u00b2", "\u0663", "1a", "-1", "0x1f"]),
    st.integers(min_value=0, max_value=10**6).map(str),
)
segments = st.one_of(
    st.sampled_from(
        [
            "repo",
            "m",
            "ca-0001",
            "ca-0042",
            "abcdef0123.roa",
            "-Dcw_Tkbb492_vMXbtufxvVUHkA.cer",
            "a&b.roa",
            "UPPER.MFT",
            "a.b.c",
            "a..b",
            "~x",
            *HOSTILE_LAST,
        ]
    ),
    st.text(alphabet=_SEG_ALPHABET, max_size=8),
    st.text(max_size=3),
)


@st.composite
def rsync_like(draw: st.DrawFn) -> str:
    port = draw(ports)
    authority = draw(hosts) + ("" if port is None else ":" + port)
    path = "/".join(draw(st.lists(segments, max_size=5)))
    text = draw(schemes) + authority + "/" + path + ("/" if draw(st.booleans()) else "")
    if draw(st.integers(0, 30)) == 0:
        # Around the absolute length limit, where the cache must not accept more than before.
        text += "x" * (_ABSOLUTE_MAX_LENGTH - len(text) + draw(st.integers(-1, 1)))
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=rsync_like(), last=segments)
def test_generated_uris(text: str, last: str) -> None:
    _check(text)
    _check_warm(_prefix(text), last)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(rsync_like(), min_size=1, max_size=12), lasts=st.lists(segments, max_size=6))
def test_generated_sequences_share_one_cache(texts: list[str], lasts: list[str]) -> None:
    """Many prefixes in one cache, each reused with arbitrary last segments, in any order."""
    uri_module._dir_cache.clear()
    for text in texts:
        for candidate in [text] + [_prefix(text) + last for last in lasts]:
            assert _new(candidate) == _oracle(candidate), candidate


# --- edge cases written out --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "then"),
    [
        # The module as the last segment: "rsync://h/" is no prefix of anything valid.
        ("rsync://h/m", "rsync://h/"),
        ("rsync://h/m", "rsync://h/.."),
        ("rsync://h:873/m", "rsync://h:873/"),
        # Host case: every spelling has its own entry, and all fold to the same host.
        ("rsync://H.Example/m/a/x", "rsync://h.example/m/a/y"),
        ("rsync://h.example/m/a/x", "rsync://H.EXAMPLE/m/a/"),
        # Directory URIs, deep and shallow.
        ("rsync://h/m/a/b/c.roa", "rsync://h/m/a/b/"),
        ("rsync://h/m/x.roa", "rsync://h/m/"),
        ("rsync://h/m/", "rsync://h/m/x"),
        ("rsync://h/m/", "rsync://h/m/.x"),
        # Ports: the same host on another port is another prefix.
        ("rsync://h:873/m/a", "rsync://h:0/m/a"),
        ("rsync://h:873/m/a", "rsync://h:00873/m/a"),
        ("rsync://h:65535/m/a", "rsync://h:65536/m/a"),
        ("rsync://h:1/m/a", "rsync://h:01/m/b"),
        # Characters the rules refuse, right after the known prefix.
        ("rsync://h/m/d/a", "rsync://h/m/d/%"),
        ("rsync://h/m/d/a", "rsync://h/m/d/a\n"),
        ("rsync://h/m/d/a", "rsync://h/m/d/\x00"),
        ("rsync://h/m/d/a", "rsync://h/m/d/\u0661"),
        ("rsync://h/m/d/a", "rsync://h/m/d/a b"),
        ("rsync://h/m/d/a", "rsync://h/m/d//"),
        ("rsync://h/m/d/a", "rsync://h/m/d/../"),
    ],
)
def test_a_known_prefix_then_another_uri(first: str, then: str) -> None:
    uri_module._dir_cache.clear()
    assert _new(first) == _oracle(first)
    assert _new(then) == _oracle(then)
    assert _new(then) == _oracle(then)


@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
def test_absolute_length_limit_with_a_known_prefix(delta: int) -> None:
    prefix = "rsync://h/m/dir/"
    uri_module._dir_cache.clear()
    assert _new(prefix + "a")[0] == "ok"
    text = prefix + "a" * (_ABSOLUTE_MAX_LENGTH - len(prefix) + delta)
    assert _new(text) == _oracle(text)
    assert _new(text, 10 * _ABSOLUTE_MAX_LENGTH) == _oracle(text, 10 * _ABSOLUTE_MAX_LENGTH)
    assert _new(text, len(text) - 1)[2] == Reason.URI_TOO_LONG


@pytest.mark.parametrize(
    "value", [None, b"rsync://h/m/x", 42, ["rsync://h/m/x"], bytearray(b"rsync://h/m/")]
)
def test_non_strings(value: object) -> None:
    uri_module._dir_cache.clear()
    RsyncUri("rsync://h/m/x")
    assert _new(value) == _oracle(value)
    assert _new(value)[2] == Reason.URI_SYNTAX


class _Text(str):
    """A str subclass: never served from the cache, decided as before."""


@pytest.mark.parametrize("text", ["rsync://h/m/x", "rsync://h/m/", "rsync://h/m/..", "rsync://h"])
def test_str_subclass(text: str) -> None:
    uri_module._dir_cache.clear()
    RsyncUri("rsync://h/m/warm")
    assert _new(_Text(text)) == _oracle(_Text(text))
    # Nothing it left behind may accept a string without any slash (its directory is "").
    for other in ("x", "x.roa", "", "rsync:"):
        assert _new(other) == _oracle(other)
    assert "" not in uri_module._dir_cache


def test_the_cache_is_bounded() -> None:
    cache = uri_module._dir_cache
    cache.clear()
    for i in range(uri_module._DIR_CACHE_MAX_ENTRIES + 10):
        RsyncUri(f"rsync://h/m/d{i}/x.roa")
        assert len(cache) <= uri_module._DIR_CACHE_MAX_ENTRIES
    # Emptied when full, then refilled: the last prefixes are there again.
    assert 0 < len(cache) <= 11
    assert "rsync://h/m/d8200" in cache
    # A prefix longer than the bound is never stored (and still accepted as before).
    cache.clear()
    longest = "rsync://h/m/" + "d" * (uri_module._DIR_CACHE_MAX_PREFIX - len("rsync://h/m/") - 1)
    for directory in (longest, longest + "d"):
        assert _new(directory + "/x") == _oracle(directory + "/x")
    assert list(cache) == [longest]
    assert len(longest + "/") == uri_module._DIR_CACHE_MAX_PREFIX


def test_only_valid_prefixes_are_stored() -> None:
    cache = uri_module._dir_cache
    cache.clear()
    for text in ["rsync://h/m/../x", "rsync://h", "rsync://h:0/m/x", "rsync://a..b/m/x"]:
        with pytest.raises(RemoteProtocolError):
            RsyncUri(text)
    RsyncUri("rsync://h/m")  # the module is the last segment: nothing to store
    assert cache == {}
    RsyncUri("rsync://H:0873/m/a/b.roa")
    assert cache == {"rsync://H:0873/m/a": ("h", 873, "m", len("rsync://H:0873/m/"))}


def test_threads_share_the_cache() -> None:
    texts = [
        f"rsync://h{i % 7}/m/d{i % 13}/{name}"
        for i in range(400)
        for name in ("ok.roa", "..", ".x", "a b", "")
    ]
    expected = [_oracle(t) for t in texts]
    errors: list[str] = []

    def work(offset: int) -> None:
        for k in range(len(texts)):
            j = (k * 7 + offset) % len(texts)
            if k % 97 == 0:
                uri_module._dir_cache.clear()
            if _new(texts[j]) != expected[j]:
                errors.append(texts[j])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_still_a_frozen_dataclass() -> None:
    """The written-out __init__ keeps what the generated one gave."""
    uri_module._dir_cache.clear()
    cold = RsyncUri("rsync://H:873/m/a/b.roa")
    warm = RsyncUri("rsync://H:873/m/a/b.roa")
    assert cold == warm and hash(cold) == hash(warm)
    assert repr(warm) == "RsyncUri(uri='rsync://H:873/m/a/b.roa')"
    assert [f.name for f in fields(RsyncUri)] == ["uri", "host", "port", "module", "path"]
    assert RsyncUri.__match_args__ == ("uri",)
    assert RsyncUri(uri="rsync://h/m/") == RsyncUri("rsync://h/m/")
    with pytest.raises(FrozenInstanceError):
        warm.host = "x"  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(warm))
    assert (copy.uri, copy.host, copy.port, copy.module, copy.path) == (
        warm.uri,
        "h",
        873,
        "m",
        "a/b.roa",
    )
    moved = replace(warm, uri="rsync://h/z/q")
    assert (moved.module, moved.path) == ("z", "q")
    with pytest.raises(RemoteProtocolError):
        replace(warm, uri="rsync://h/z/..")
