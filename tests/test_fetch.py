"""``rpkirepo fetch`` end to end on loopback: a testbed published by ``rpkirepo publish``, its
RRDP files over TLS (the scripted server, so a test can break any of them) and its rsync tree
from our rsync daemon; the walk from the TAL, the delta path, and the fallbacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fetch_support import Origin, fetch, origin, view, view_mtimes
from rpkirepo.errors import Reason


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Origin]:
    with origin(tmp_path / "origin", cas=4, depth=2) as o:
        yield o


def test_walk_takes_the_snapshot_then_nothing_then_deltas(repo: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    report = fetch(repo, cache)
    assert [t.transport for t in report.tals] == ["https"]
    [r] = report.repositories
    assert (r.transport, r.outcome) == ("rrdp", "snapshot"), r
    assert r.objects == len(repo.objects())
    assert view(cache, repo.module_dir) == repo.objects()
    # RFC 9589 file times, as the testbed wrote them
    assert view_mtimes(cache, repo.module_dir) == repo.mtimes()
    # the TA and every CA: one publication point each, all matching their manifests
    assert len(report.publication_points) == 1 + 4
    assert all(p.consistent for p in report.publication_points), report.publication_points
    assert (cache / "ta" / "ta.cer").read_bytes() == (repo.testbed / "ta.cer").read_bytes()

    repo.https.clear()
    report = fetch(repo, cache)
    [r] = report.repositories
    assert (r.transport, r.outcome) == ("rrdp", "not-modified")
    assert sorted(repo.https.paths()) == ["/rrdp/notification.xml", "/ta.cer"]

    repo.advance()
    repo.https.clear()
    report = fetch(repo, cache)
    [r] = report.repositories
    assert (r.transport, r.outcome) == ("rrdp", "deltas"), r
    asked = repo.https.paths()
    assert not any("snapshot" in p for p in asked), asked
    assert any("delta" in p for p in asked), asked
    assert view(cache, repo.module_dir) == repo.objects()
    assert view_mtimes(cache, repo.module_dir) == repo.mtimes()
    assert all(p.consistent for p in report.publication_points)


def test_manifest_consistency_is_reported(repo: Origin, tmp_path: Path) -> None:
    top = repo.testbed / "repository"
    roa = sorted(top.rglob("*.roa"))[0]
    extra = roa.with_name("extra-file.roa")
    extra.write_bytes(roa.read_bytes())
    roa.unlink()
    repo.publish()
    report = fetch(repo, tmp_path / "cache")
    bad = [p for p in report.publication_points if not p.consistent]
    assert len(bad) == 1
    assert bad[0].missing == [roa.name]
    assert bad[0].extra == ["extra-file.roa"]
    assert bad[0].ca_repository.endswith(roa.parent.name + "/")


def test_manifest_number_going_back_is_reported(repo: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch(repo, cache)
    numbers = (cache / "manifest-numbers.json").read_text()
    assert numbers.count("mft") == 5
    # Pretend an earlier run saw higher numbers: what is served now is a replay (c)34.
    import json

    raised = {k: "ffffffff" for k in json.loads(numbers)}
    (cache / "manifest-numbers.json").write_text(json.dumps(raised))
    report = fetch(repo, cache)
    assert all(Reason.FETCH_MANIFEST_REPLAY.value in p.reasons for p in report.publication_points)


def test_depth_and_repository_limits(repo: Origin, tmp_path: Path) -> None:
    from dataclasses import replace

    from rpkirepo.limits import DEFAULT_LIMITS

    report = fetch(repo, tmp_path / "c1", limits=replace(DEFAULT_LIMITS, fetch_max_depth=1))
    assert {r["reason"] for r in report.refusals} == {Reason.FETCH_DEPTH.value}
    assert max(p.depth for p in report.publication_points) == 1
    report = fetch(repo, tmp_path / "c2", limits=replace(DEFAULT_LIMITS, fetch_max_cas=2))
    assert len(report.publication_points) == 2
    assert {r["reason"] for r in report.refusals} == {Reason.FETCH_TOO_MANY_CAS.value}


def test_rrdp_down_keeps_the_last_good_copy(repo: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch(repo, cache)
    before = view(cache, repo.module_dir)
    repo.https.files.clear()  # every RRDP file and the TA certificate: 404
    report = fetch(repo, cache)  # and no rsync daemon is running: rsync fails too
    [r] = report.repositories
    assert r.transport == "cached"
    assert Reason.FETCH_RRDP_FAILED.value in r.reasons
    assert Reason.FETCH_RSYNC_FAILED.value in r.reasons
    assert Reason.FETCH_STALE.value in r.reasons
    assert [t.transport for t in report.tals] == ["cached"]
    assert view(cache, repo.module_dir) == before


def test_cli_report_and_exit_codes(
    repo: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from rpkirepo.cli import main
    from rpkirepo.fsutil import DirLock

    cache, report = tmp_path / "cache", tmp_path / "report.json"
    argv = ["fetch", "--tal", str(repo.tal), "--cache", str(cache), "--ca-file",
            str(repo.tls.ca_cert), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 repositories (1 offer RRDP)" in out
    doc = json.loads(report.read_text())
    assert doc["version"] == 1 and doc["ok"] is True
    [r] = doc["repositories"]
    assert r["repository"] == repo.notify
    assert (r["transport"], r["outcome"], r["offers_rrdp"]) == ("rrdp", "snapshot", True)
    assert r["reasons"] == ["no-local-state"]
    assert r["objects"] == len(repo.objects()) and r["bytes"] > 0
    assert doc["summary"]["rrdp_share"] == 1.0
    assert doc["summary"]["inconsistent_publication_points"] == 0
    assert len(doc["publication_points"]) == 5
    assert doc["trust_anchors"] == [
        {"tal": "ta", "uri": repo.https.url("/ta.cer"), "transport": "https", "reasons": [],
         "errors": []}
    ]  # fmt: skip

    assert main([*argv, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["repositories"][0]["outcome"] == "not-modified"

    with DirLock(cache):
        assert main(argv) == 3  # another run holds the cache

    repo.https.files.pop("/ta.cer")
    assert main(argv) == 1  # the TA came from the last good copy
    assert json.loads(report.read_text())["trust_anchors"][0]["transport"] == "cached"

    with pytest.raises(SystemExit) as exc:
        main(["fetch", "--cache", str(cache)])
    assert exc.value.code == 2
    bad = tmp_path / "bad.tal"
    bad.write_text("http://example.net/ta.cer\n\nAAAA\n")
    assert main(["fetch", "--tal", str(bad), "--cache", str(cache)]) == 1
    assert "fetch-tal-malformed" in capsys.readouterr().err


def test_corpus_tals_parse_or_are_refused_with_a_reason(corpus_dir: Path) -> None:
    from rpkirepo.errors import InputError
    from rpkirepo.fetch import read_tal

    tals = sorted((corpus_dir / "tal").rglob("*.tal"))
    assert len(tals) > 20
    refused = []
    for path in tals:
        try:
            tal = read_tal(path)
        except InputError as exc:
            assert exc.reason == Reason.FETCH_TAL
            refused.append(path.relative_to(corpus_dir / "tal").as_posix())
            continue
        assert tal.uris and tal.spki_der.startswith(b"\x30")
        assert all(u.uri.startswith(("rsync://", "https://")) for u in tal.ordered_uris)
    # http:// URIs (RFC 8630 allows rsync and https only), a URI without a path, and the RIPE
    # validator's own "key = value" format, which is not RFC 8630
    other_format = [
        r for r in refused if (corpus_dir / "tal" / r).read_text().startswith("ca.name = ")
    ]
    assert len(other_format) == 8
    assert sorted(set(refused) - set(other_format)) == [
        "cfrpki/apnic.tal",
        "fort/test-lacnic.tal",
        "rpki-validator-3/rfc8630/example-tal-with-http-and-rsync.tal",
    ]


def test_rsync_fallback_fetches_only_what_changed(repo: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch(repo, cache)  # RRDP: the store holds everything, with RFC 9589 mtimes
    repo.advance()
    snap = next(p for p in repo.https.files if "snapshot" in p)
    for path in list(repo.https.files):
        if "delta" in path or path == snap:
            repo.https.files[path] = b"<broken/>"  # every file hash is wrong now
    with repo.rsync():
        report = fetch(repo, cache)
        [r] = report.repositories
        assert (r.transport, r.outcome) == ("rsync", "rsync"), r
        assert r.reasons[-2:] == [Reason.RRDP_ROOT_ELEMENT.value, Reason.FETCH_RRDP_FAILED.value]
        assert view(cache, repo.module_dir) == repo.objects()
        assert view_mtimes(cache, repo.module_dir) == repo.mtimes()
        # the quick check against the copy RRDP made: only what the advance changed came over
        changed = r.added + r.modified
        assert 0 < r.files_fetched_rsync == changed < len(repo.objects()) // 2, r
        assert all(p.consistent for p in report.publication_points)
        report = fetch(repo, cache)  # RRDP still broken: rsync again, nothing to transfer
        [r] = report.repositories
        assert (r.transport, r.files_fetched_rsync) == ("rsync", 0), r
    repo.load_files()  # RRDP mended: the session was forgotten, so the snapshot is taken
    report = fetch(repo, cache)
    [r] = report.repositories
    assert (r.transport, r.outcome, r.reasons) == ("rrdp", "snapshot", ["no-local-state"]), r
    assert view(cache, repo.module_dir) == repo.objects()


def test_rsync_only_and_nothing_written_outside_the_cache(repo: Origin, tmp_path: Path) -> None:
    from fetch_support import snapshot_of_tree

    before = snapshot_of_tree(tmp_path)
    cache = tmp_path / "cache"
    with repo.rsync():
        report = fetch(repo, cache, rrdp=False)
    [r] = report.repositories
    assert (r.transport, r.outcome, r.offers_rrdp) == ("rsync", "rsync", False)
    assert r.key.module == repo.rsync_base
    assert view(cache, repo.module_dir) == repo.objects()
    after = snapshot_of_tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache")} == before


def test_one_repository_by_notification_or_rsync_uri(repo: Origin, tmp_path: Path) -> None:
    from rpkirepo.cli import main

    cache = tmp_path / "by-notify"
    argv = ["-q", "fetch", "--notify", repo.notify, "--cache", str(cache), "--ca-file",
            str(repo.tls.ca_cert)]  # fmt: skip
    assert main(argv) == 0
    assert view(cache, repo.module_dir) == repo.objects()
    with repo.rsync():
        cache = tmp_path / "by-rsync"
        argv = ["-q", "fetch", "--rsync", repo.rsync_base, "--cache", str(cache)]
        assert main(argv) == 0
        assert view(cache, repo.module_dir) == repo.objects()
        assert main([*argv, "--rsync-external"]) == 0
        assert view(cache, repo.module_dir) == repo.objects()
    assert main(argv) == 1  # the daemon is gone: the last good copy stays
    assert view(cache, repo.module_dir) == repo.objects()


def test_ta_over_rsync_fetches_that_one_file(repo: Origin, tmp_path: Path) -> None:
    from rpkirepo.errors import LocalProtocolError
    from rpkirepo.fetch import parse_tal
    from rpkirepo.rsync.client import fetch_module
    from rpkirepo.uri import RsyncUri

    with repo.rsync():
        dest = tmp_path / "one"
        dest.mkdir()
        got = fetch_module(RsyncUri(repo.rsync_base), dest, only_names=("ta.cer",))
        assert [f.path for f in got.files] == ["ta.cer"]
        assert [p.name for p in dest.rglob("*")] == ["ta.cer"]
        for bad in ("*.cer", "../ta.cer", "ta/ta.mft", ""):
            with pytest.raises(LocalProtocolError):
                fetch_module(RsyncUri(repo.rsync_base), tmp_path / "x", only_names=(bad,))
        # A TAL with its rsync URI only: the walk gets the TA over rsync, then RRDP as usual.
        text = repo.tal.read_text().splitlines()
        tal = parse_tal(
            "\n".join(line for line in text if not line.startswith("https://")).encode(), "ta"
        )
        from rpkirepo.fetch import FetchOptions, run_fetch
        from rpkirepo.httpget import HttpOptions

        report = run_fetch(
            FetchOptions(cache=tmp_path / "cache", http=HttpOptions(ca_file=repo.tls.ca_cert)),
            tals=[tal],
        )
    assert [(t.transport, t.uri) for t in report.tals] == [("rsync", repo.rsync_base + "ta.cer")]
    assert view(tmp_path / "cache", repo.module_dir) == repo.objects()
    assert (tmp_path / "cache" / "objects" / "ta" / "ta" / "ta.cer").is_file()


def test_object_limit_per_repository(repo: Origin, tmp_path: Path) -> None:
    from dataclasses import replace

    from rpkirepo.limits import DEFAULT_LIMITS

    held = len(repo.objects())
    few = replace(DEFAULT_LIMITS, max_repository_objects=held - 1)
    report = fetch(repo, tmp_path / "c1", limits=few)
    [r] = report.repositories
    assert r.transport == "none"
    assert r.reasons[:2] == [Reason.TOO_MANY_OBJECTS.value, Reason.FETCH_RRDP_FAILED.value]
    # A delta that grows the repository past the limit: the snapshot is tried, and refused too;
    # the last good copy stays.
    cache = tmp_path / "c2"
    fetch(repo, cache)
    top = repo.testbed / "repository"
    roa = sorted(top.rglob("*.roa"))[0]
    roa.with_name("extra.roa").write_bytes(roa.read_bytes())
    repo.publish()
    exact = replace(DEFAULT_LIMITS, max_repository_objects=held)
    report = fetch(repo, cache, limits=exact)
    [r] = report.repositories
    assert r.transport == "cached"
    assert r.reasons[:2] == [Reason.TOO_MANY_OBJECTS.value, Reason.FETCH_RRDP_FAILED.value]
    assert "extra.roa" not in "".join(view(cache, repo.module_dir))


def test_held_files_index_equals_the_range_queries(tmp_path: Path) -> None:
    """The walk's one-scan index of a store gives each publication point exactly the files a
    range query over its directory gives (direct children only; a sibling directory that
    shares the prefix, like ``ca-1`` and ``ca-10``, is not mixed in)."""
    import sqlite3

    from rpkirepo.fetch.walk import _index_objects

    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("CREATE TABLE objects (path TEXT PRIMARY KEY, sha256 BLOB NOT NULL)")
    paths = [
        f"h:873/repo/{d}/{n}"
        for d in ("ca-1", "ca-10", "ca-1/sub", "ca-1.x", "ca-2")
        for n in ("a.roa", "b.mft", "c.cer")
    ] + ["h:873/repo/top.cer"]
    conn.executemany(
        "INSERT INTO objects VALUES (?,?)", [(p, bytes([i]) * 32) for i, p in enumerate(paths)]
    )
    index = _index_objects(conn)
    assert index is not None
    for d in ("h:873/repo", "h:873/repo/ca-1", "h:873/repo/ca-10", "h:873/repo/ca-1/sub",
              "h:873/repo/ca-9"):  # fmt: skip
        prefix = d + "/"
        expected = {
            path[len(prefix) :]: bytes(sha)
            for path, sha in conn.execute(
                "SELECT path, sha256 FROM objects WHERE path >= ? AND path < ?",
                (prefix, d + "0"),
            )
            if "/" not in path[len(prefix) :]
        }
        assert index.get(d, {}) == expected, d


@pytest.mark.parametrize("held_rows", [100_000, 0])
def test_parse_cache_read_in_one_scan_or_per_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_rows: int
) -> None:
    """The walk's parse cache gives the same answers whether it was read in one scan (small) or
    is asked entry by entry (above ``_HELD_PARSE_ROWS``); unused entries are dropped at the end
    and a damaged file is replaced."""
    from rpkirepo.fetch import walk

    monkeypatch.setattr(walk, "_HELD_PARSE_ROWS", held_rows)
    path = tmp_path / "walk.db"
    cache = walk._ParseCache(path)
    cache.put(b"a" * 32, "mft", ["1", [["x.roa", "00"]]])
    cache.put(b"b" * 32, "cer", ["ca", ["rsync://h/m/"], [], []])
    cache.close()

    cache = walk._ParseCache(path)
    assert (cache.held is not None) == (held_rows > 0)
    assert cache.get(b"a" * 32, "mft") == ["1", [["x.roa", "00"]]]
    assert cache.get(b"a" * 32, "cer") is None  # the kind is part of the key
    assert cache.get(b"c" * 32, "mft") is None
    cache.close()  # b was not used this run: dropped

    cache = walk._ParseCache(path)
    assert cache.get(b"b" * 32, "cer") is None
    assert cache.get(b"a" * 32, "mft") == ["1", [["x.roa", "00"]]]
    cache.close()

    path.write_bytes(b"not a database" * 100)
    cache = walk._ParseCache(path)
    assert cache.get(b"a" * 32, "mft") is None
    cache.close()
