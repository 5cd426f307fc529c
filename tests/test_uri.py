"""RsyncUri / HttpsUri: every URI of rrdp-checklist (b)18 and (c)28 is refused, and no URI can
map to a path outside its root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpkirepo.errors import Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.uri import HttpsUri, RsyncUri, path_under, uri_to_relpath

BAD_RSYNC = {
    "rsync://h/m/../../x": Reason.URI_DOT_SEGMENT,
    "rsync://h/m/./x": Reason.URI_DOT_SEGMENT,
    "rsync://h//x": Reason.URI_EMPTY_SEGMENT,
    "rsync://../m/x": Reason.URI_DOT_SEGMENT,
    "rsync://h/../x": Reason.URI_DOT_SEGMENT,
    "rsync://./m/x": Reason.URI_DOT_SEGMENT,
    "rsync://h/./x": Reason.URI_DOT_SEGMENT,
    "rsync://h/m/a/.hidden": Reason.URI_HIDDEN_SEGMENT,
    "rsync://h/m/....//": Reason.URI_HIDDEN_SEGMENT,
    "rsync://h/m/a//b": Reason.URI_EMPTY_SEGMENT,
    "rsync://h/m/a\\b": Reason.URI_BAD_CHARACTER,
    "rsync://h/m/a\x00b": Reason.URI_BAD_CHARACTER,
    "rsync://h/m/a\nb": Reason.URI_BAD_CHARACTER,
    "rsync://h/m/a b": Reason.URI_BAD_CHARACTER,
    "rsync://h/m/caf\u00e9.roa": Reason.URI_BAD_CHARACTER,
    "rsync://h/m/a?b": Reason.URI_BAD_CHARACTER,
    'rsync://h/m/a"b': Reason.URI_BAD_CHARACTER,
    "rsync://h/m/" + "a" * 2100: Reason.URI_TOO_LONG,
    "RSYNC://h/m/x": Reason.URI_SCHEME,
    "https://h/m/x": Reason.URI_SCHEME,
    "rsync://": Reason.URI_BAD_HOST,
    "rsync://h": Reason.URI_SYNTAX,
    "rsync://h:0/m/": Reason.URI_BAD_HOST,
    "rsync://h:99999/m/": Reason.URI_BAD_HOST,
    "rsync://-h/m/": Reason.URI_BAD_HOST,
    "rsync://h_x/m/": Reason.URI_BAD_HOST,
    "rsync://h./m/": Reason.URI_BAD_HOST,
    "rsync://a..b/m/": Reason.URI_DOT_SEGMENT,
}


@pytest.mark.parametrize(("text", "reason"), list(BAD_RSYNC.items()))
def test_bad_rsync_uris_are_refused_with_their_reason(text: str, reason: Reason) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        RsyncUri.parse(text)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("text", "host", "port", "module", "path", "is_dir"),
    [
        ("rsync://h/m/", "h", None, "m", "", True),
        ("rsync://h/m", "h", None, "m", "", False),
        (
            "rsync://rpki.ripe.net/repository/DEFAULT/a.mft",
            "rpki.ripe.net",
            None,
            "repository",
            "DEFAULT/a.mft",
            False,
        ),
        ("rsync://H.Example:873/repo/x/", "h.example", 873, "repo", "x", True),
        (
            "rsync://h/m/-Dcw_Tkbb492_vMXbtufxvVUHkA.cer",
            "h",
            None,
            "m",
            "-Dcw_Tkbb492_vMXbtufxvVUHkA.cer",
            False,
        ),
        ("rsync://10.0.0.1/m/a&b.roa", "10.0.0.1", None, "m", "a&b.roa", False),
    ],
)
def test_good_rsync_uris(
    text: str, host: str, port: int | None, module: str, path: str, is_dir: bool
) -> None:
    uri = RsyncUri.parse(text)
    assert (uri.host, uri.port, uri.module, uri.path, uri.is_directory) == (
        host,
        port,
        module,
        path,
        is_dir,
    )


def test_length_limit_is_configurable() -> None:
    text = "rsync://h/m/" + "a" * 100
    RsyncUri.parse(text)
    with pytest.raises(RemoteProtocolError) as info:
        RsyncUri.parse(text, max_length=50)
    assert info.value.reason == Reason.URI_TOO_LONG


@pytest.mark.parametrize(
    "text",
    [
        "https://h/a/../b",
        "https://h/a/./b",
        "https://h//b",
        "https://../x",
        "https://h/a?x=1",
        "https://h/a#f",
        "https://h",
        "http://h/x",
        "https://h:70000/x",
        "https://h/\u00e9",
    ],
)
def test_bad_https_uris(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        HttpsUri.parse(text)


def test_https_origin_and_join() -> None:
    base = HttpsUri("https://rrdp.example.net:8443/rrdp/")
    assert base.origin == ("https", "rrdp.example.net", 8443)
    n = base.join("notification.xml")
    assert n.uri == "https://rrdp.example.net:8443/rrdp/notification.xml"
    assert n.same_origin(base) and n.is_under(base)
    assert not HttpsUri("https://other.example.net:8443/x").same_origin(base)
    assert HttpsUri("https://h/x").port == 443


def test_relative_and_join() -> None:
    base = RsyncUri("rsync://h/m/ca/")
    obj = base.join("a/b.roa")
    assert obj.relative_to(base) == "a/b.roa"
    assert not RsyncUri("rsync://h/m/other/x.roa").is_under(base)
    with pytest.raises(RemoteProtocolError) as info:
        RsyncUri("rsync://h/m/other/x.roa").relative_to(base)
    assert info.value.reason == Reason.URI_OUTSIDE_BASE
    assert uri_to_relpath(obj) == "h/m/ca/a/b.roa"
    assert uri_to_relpath(obj, include_host=False) == "m/ca/a/b.roa"
    assert uri_to_relpath(RsyncUri("rsync://h:8873/m/x.roa")) == "h:8873/m/x.roa"


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "", "a//b", ".", "a\\b"])
def test_path_under_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(RemoteProtocolError):
        path_under(tmp_path, rel)


# Any text at all, with a bias towards the characters that make traversal attempts.
_TRICKY = st.lists(st.sampled_from([*"./\\:%@-_ab\x00\n~", "..", "//", "é", "../", "%2e%2e"])).map(
    "".join
)


@given(st.one_of(_TRICKY, st.text()).map(lambda s: "rsync://" + s))
def test_no_uri_maps_outside_the_root(text: str) -> None:
    root = Path("/srv/cache/root")
    try:
        uri = RsyncUri.parse(text)
        path = path_under(root, uri_to_relpath(uri))
    except RpkiRepoError:
        return
    resolved = os.path.normpath(path)
    assert os.path.commonpath([str(root), resolved]) == str(root)
    assert resolved != str(root)
    assert ".." not in Path(resolved).relative_to(root).parts


@given(_TRICKY)
def test_path_under_never_escapes(rel: str) -> None:
    root = Path("/srv/cache/root")
    try:
        path = path_under(root, rel)
    except RpkiRepoError:
        return
    assert os.path.commonpath([str(root), os.path.normpath(path)]) == str(root)
    assert path != root
