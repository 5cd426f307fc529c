"""The store's state after an rsync fetch describes exactly its tree, without reading it back.

:func:`~rpkirepo.sync.mirror.adopt_tree` no longer hashes every file of a fetched tree: the
native client reports each file it writes with the SHA-256 of the bytes it received, each file
it links from the current tree as such (the state's row for that path applies), and
``_link_other_modules`` does the same for the modules it carries over.  These tests compare the
state's rows (path, SHA-256, size, mtime) with a fresh hash of every file of the tree, cold and
after upstream changes (including a rewrite with the same size and mtime, which rsync's quick
check does not see), for the native client and the rsync program, and check what happens when a
builder's reports and its tree disagree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import require_peer
from peers import public_dir, rsync_daemon
from rpkirepo.errors import LimitExceeded, Reason, StorageError
from rpkirepo.fetch.store import RepositoryKey, Store, StoreUpdate
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.rsync.client import fetch_module
from rpkirepo.sync.mirror import STATE_DB, TreeFiles, adopt_tree
from rpkirepo.uri import RsyncUri

Row = tuple[bytes, int, int]  # sha256, size, mtime
T0 = 1_700_000_000


def body(tag: str, size: int = 300) -> bytes:
    return (tag.encode() * size)[:size]


@dataclass
class Upstream:
    """Two rsync modules in plain directories, served by the real rsync daemon."""

    root: Path
    url: str

    def put(self, rel: str, data: bytes, mtime: int = T0) -> None:
        path = self.root / rel
        public_dir(path.parent)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))

    def module(self, name: str) -> str:
        return f"{self.url}{name}/"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    require_peer("rsync")
    top = Path(tempfile.mkdtemp(prefix="rpkirepo-fetch-rows-"))
    public_dir(top)
    try:
        up = Upstream(top / "up", "")
        for i in range(40):
            up.put(f"repo/ca{i % 4}/{i}.roa", body(f"roa{i}-", 200 + i))
            up.put(f"repo/ca{i % 4}/sub/{i}.cer", body(f"cer{i}-", 150 + i))
        up.put("repo/ca0/ca0.mft", body("mft"))
        up.put("repo/skipped.txt", body("not an RPKI object"))  # not in the include list
        for i in range(5):
            up.put(f"other/x/{i}.crl", body(f"crl{i}-"))
        with rsync_daemon(
            top / "rsyncd", {"repo": up.root / "repo", "other": up.root / "other"}
        ) as d:
            up.url = f"rsync://{d.host}:{d.port}/"
            yield up
    finally:
        shutil.rmtree(top, ignore_errors=True)


def state_rows(store: Store) -> dict[str, Row]:
    conn = sqlite3.connect(store.root / "state" / STATE_DB)
    try:
        return {
            p: (bytes(h), s, m)
            for p, h, s, m in conn.execute("SELECT path, sha256, size, mtime FROM objects")
        }
    finally:
        conn.close()


def tree_rows(top: Path) -> dict[str, Row]:
    """A fresh hash of every file below ``top`` (which must hold nothing else)."""
    out = {}
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            assert os.path.isfile(p) and not os.path.islink(p), p
            data = Path(p).read_bytes()
            out[os.path.relpath(p, top)] = (
                hashlib.sha256(data).digest(),
                st.st_size,
                st.st_mtime_ns // 10**9,
            )
    return out


def update(store: Store, modules: set[str] | None = None) -> StoreUpdate:
    rep = StoreUpdate(store.key, store.key.store_id)
    store.update_rsync(rep, store.modules if modules is None else modules, time.monotonic() + 60)
    assert rep.outcome == "rsync", rep
    return rep


def check(store: Store) -> dict[str, Row]:
    rows = state_rows(store)
    assert rows == tree_rows(store.tree)
    assert store.count_objects() == len(rows)
    return rows


@pytest.mark.parametrize("external", [False, True], ids=["native", "rsync-program"])
def test_rows_match_the_tree_cold_and_after_changes(
    upstream: Upstream, tmp_path: Path, external: bool
) -> None:
    key = RepositoryKey.for_module(RsyncUri(upstream.module("repo")))
    store = Store(tmp_path / "cache", key, rsync_external=external)
    rep = update(store)
    rows = check(store)
    host = upstream.url[len("rsync://") : -1]
    assert len(rows) == 81 == rep.files_fetched_rsync == rep.added
    assert not any(p.endswith(".txt") for p in rows)

    # Upstream changes: a new size, a new mtime only, an addition, a removal, and a rewrite
    # with the same size and mtime, which rsync's quick check cannot see.
    upstream.put("repo/ca1/1.roa", body("changed", 500))
    upstream.put("repo/ca2/2.roa", body("roa2-", 202), mtime=T0 + 60)
    upstream.put("repo/ca3/new.roa", body("new"))
    (upstream.root / "repo/ca0/sub/0.cer").unlink()
    upstream.put("repo/ca0/4.roa", body("same-size-", 204))
    rep = update(store)
    after = check(store)
    prefix = f"{host}/repo/"
    assert set(after) == set(rows) - {prefix + "ca0/sub/0.cer"} | {prefix + "ca3/new.roa"}
    assert after[prefix + "ca1/1.roa"][1] == 500
    assert after[prefix + "ca2/2.roa"][2] == T0 + 60
    # The quick check kept the old bytes, and the state says so (it describes the tree).
    assert after[prefix + "ca0/4.roa"] == rows[prefix + "ca0/4.roa"]
    assert (store.tree / prefix / "ca0/4.roa").read_bytes() == body("roa4-", 204)
    assert rep.files_fetched_rsync == 3
    assert (rep.added, rep.modified, rep.removed) == (1, 1, 1)  # the mtime alone: same hash

    # Nothing changed: everything linked, the rows carried over from the state.
    rep = update(store)
    assert check(store) == after
    assert rep.files_fetched_rsync == 0 == rep.added + rep.modified + rep.removed


def test_a_state_row_that_does_not_describe_the_file_is_rehashed(
    upstream: Upstream, tmp_path: Path
) -> None:
    key = RepositoryKey.for_module(RsyncUri(upstream.module("repo")))
    store = Store(tmp_path / "cache", key)
    update(store)
    rows = check(store)
    victim = sorted(rows)[3]
    db = sqlite3.connect(store.root / "state" / STATE_DB)
    with db:
        db.execute("UPDATE objects SET mtime = mtime + 1, sha256 = x'00' WHERE path = ?", (victim,))
    db.close()
    rep = update(store)
    assert rep.files_fetched_rsync == 0
    assert check(store) == rows  # the linked file was hashed again, not taken from the row


def test_modules_carried_over_keep_their_rows(upstream: Upstream, tmp_path: Path) -> None:
    repo, other = upstream.module("repo"), upstream.module("other")
    store = Store(tmp_path / "cache", RepositoryKey.for_module(RsyncUri(repo)))
    store.modules.add(other)
    update(store)
    rows = check(store)
    assert sum("/other/" in p for p in rows) == 5
    upstream.put("repo/ca3/new.roa", body("new"))
    rep = update(store, {repo})  # `other` is linked from the current tree, with its rows
    assert rep.files_fetched_rsync == 1
    after = check(store)
    assert {p: r for p, r in after.items() if "/other/" in p} == {
        p: r for p, r in rows.items() if "/other/" in p
    }


def test_native_client_reports_every_file(upstream: Upstream, tmp_path: Path) -> None:
    uri = RsyncUri(upstream.module("repo"))
    reports: list[tuple[str, int, int, bytes | None]] = []

    def sink(path: str, size: int, mtime: int, sha256: bytes | None) -> None:
        reports.append((path, size, mtime, sha256))

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    got = fetch_module(uri, first, on_file=sink, include_extensions=("roa", "cer", "mft"))
    assert got.files == () and got.files_fetched == len(reports) == 81
    assert {p: (h, s, m) for p, s, m, h in reports} == tree_rows(first)
    reports.clear()
    upstream.put("repo/ca1/1.roa", body("changed", 500))
    got = fetch_module(uri, second, basis=first, on_file=sink, include_extensions=("roa",))
    assert got.files_fetched == 1
    fresh = tree_rows(second)
    assert len(reports) == len(fresh) == 40
    for path, size, mtime, sha in reports:
        assert (size, mtime) == fresh[path][1:]
        if path == "ca1/1.roa":
            assert sha == fresh[path][0]
        else:
            assert sha is None and fresh[path] == tree_rows(first)[path]  # a link of the basis


# ---- adopt_tree and its builders, without a network -----------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cache", RepositoryKey.for_module(RsyncUri("rsync://h/m/")))


def adopt(store: Store, build: Callable[[Path, Path | None, TreeFiles], None]) -> None:
    adopt_tree(store._options(time.monotonic() + 60), build)


def write(root: Path, rel: str, data: bytes, mtime: int = T0) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def good_tree(root: Path, current: Path | None, files: TreeFiles) -> None:
    """Two reported files (one a link of the current tree's file), one not reported."""
    report = files.report("h/m")
    write(root, "h/m/a.roa", body("a"))
    report("a.roa", 300, T0, hashlib.sha256(body("a")).digest())
    if current is not None:
        os.link(current / "h/m/b.roa", root / "h/m/b.roa")
        report("b.roa", 300, T0, None)
    else:
        write(root, "h/m/b.roa", body("b"))
        report("b.roa", 300, T0, hashlib.sha256(body("b")).digest())
    write(root, "h/unreported/c.roa", body("c"), T0 + 5)  # outside the covered directory


def test_adopt_hashes_what_is_not_reported(store: Store) -> None:
    adopt(store, good_tree)
    rows = check(store)
    assert set(rows) == {"h/m/a.roa", "h/m/b.roa", "h/unreported/c.roa"}
    adopt(store, good_tree)
    assert check(store) == rows


@contextlib.contextmanager
def refused(store: Store, reason: Reason, kind: type[Exception] = StorageError) -> Iterator[None]:
    """The adoption fails with ``reason`` and the last good tree and state stay."""
    before = (os.readlink(store.tree), state_rows(store))
    with pytest.raises(kind) as info:
        yield
    assert getattr(info.value, "reason", None) == reason
    assert (os.readlink(store.tree), state_rows(store)) == before
    leftovers = [n for n in os.listdir(store.tree.parent / "revisions") if n.startswith(".")]
    assert leftovers == []


def but(
    change: Callable[[Path, TreeFiles], None],
) -> Callable[[Path, Path | None, TreeFiles], None]:
    def build(root: Path, current: Path | None, files: TreeFiles) -> None:
        good_tree(root, current, files)
        change(root, files)

    return build


def test_adopt_refuses_reports_that_do_not_match_the_tree(store: Store) -> None:
    adopt(store, good_tree)
    check(store)
    sha = hashlib.sha256(b"x").digest()
    cases: list[Callable[[Path, TreeFiles], None]] = [
        # reported, not there
        lambda root, files: files.report("h/m")("ghost.roa", 1, T0, sha),
        # there, not reported, in a covered directory
        lambda root, files: write(root, "h/m/sneaked.roa", b"x"),
        # reported twice
        lambda root, files: files.report("h/m")("a.roa", 300, T0, sha),
        # one reported under the wrong name, the same count
        lambda root, files: (
            write(root, "h/m/d.roa", b"x"),
            files.report("h/m")("e.roa", 1, T0, sha),
        ),
        # a covered directory that is not there
        lambda root, files: files.report("h/gone")("f.roa", 1, T0, sha),
    ]
    for change in cases:
        with refused(store, Reason.STORAGE_UNEXPECTED):
            adopt(store, but(change))
    # not a regular file, covered or not
    for where in ("h/m/link.roa", "h/unreported/link.roa"):
        with refused(store, Reason.STORAGE_UNEXPECTED):
            adopt(store, but(lambda root, files, w=where: os.symlink("a.roa", root / w)))
    adopt(store, good_tree)  # and the store is still usable
    check(store)


def test_adopt_applies_the_object_cap(store: Store) -> None:
    adopt(store, good_tree)
    limits = replace(DEFAULT_LIMITS, max_repository_objects=2)
    capped = Store(store.root.parent.parent, store.key, limits=limits)
    with refused(capped, Reason.TOO_MANY_OBJECTS, LimitExceeded):
        adopt(capped, good_tree)  # two reported, one found: the third is refused

    def reported_only(root: Path, current: Path | None, files: TreeFiles) -> None:
        report = files.report("h/m")
        for i in range(3):
            write(root, f"h/m/{i}.roa", body(str(i)))
            report(f"{i}.roa", 300, T0, hashlib.sha256(body(str(i))).digest())
        raise AssertionError("the third report should have been refused")

    with refused(capped, Reason.TOO_MANY_OBJECTS, LimitExceeded):
        adopt(capped, reported_only)
