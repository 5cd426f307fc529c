"""The native rsync client against the real ``rsync --daemon`` and against rpkirepo's daemon.

A tree written by ``rpkirepo publish`` is served on loopback by Debian's rsync daemon and by our
own; at protocols 31, 30 and 27 the client makes a first fetch (exact bytes and mtimes), a
second with the first as basis (nothing fetched, everything hard-linked), a third after a new
revision (only the changed files fetched), fetches a subdirectory, and meets a missing path and
an unknown module.  Then -z, the include rules, and the external variant (the rsync program).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_peer
from peers import public_dir, rpkirepo_rsyncd, rsync_daemon
from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rsync.client import ModuleFetch, fetch_module, fetch_module_external
from rpkirepo.uri import HttpsUri, RsyncUri

pytestmark = pytest.mark.peer

PROTOCOLS = (31, 30, 27)
SERVERS = ("rsyncd", "rpkirepo")


@dataclass
class World:
    root: Path
    src: Path
    files: dict[str, bytes]
    pool: list[bytes]
    opts: PublishOptions

    @property
    def module_dir(self) -> Path:
        return self.root / "rsync"

    @property
    def current(self) -> Path:
        return self.module_dir / "current"

    def change(self) -> set[str]:
        """Rewrite two objects, add one, withdraw one; publish; return the new or changed."""
        names = sorted(self.files)
        changed = set(names[:2])
        for rel in changed:
            self.files[rel] = next(d for d in self.pool if d != self.files[rel])
            (self.src / rel).write_bytes(self.files[rel])
        added = "ca9/new.roa"
        self.files[added] = self.pool[0]
        (self.src / added).parent.mkdir(exist_ok=True)
        (self.src / added).write_bytes(self.files[added])
        gone = names[-1]
        (self.src / gone).unlink()
        del self.files[gone]
        publish(self.opts)
        return {*changed, added}


@pytest.fixture
def world(corpus_dir: Path) -> Iterator[World]:
    require_peer("rsync")
    root = Path(tempfile.mkdtemp(prefix="rpkirepo-rsync-client-"))
    public_dir(root)
    try:
        rng = random.Random(11)
        pool = [
            p.read_bytes()
            for p in sorted((corpus_dir / "objects").rglob("*"))
            if p.suffix in (".roa", ".mft", ".crl", ".cer") and p.stat().st_size > 200
        ]
        src = public_dir(root / "src")
        files: dict[str, bytes] = {}
        for i, data in enumerate(rng.sample(pool, 30)):
            rel = f"ca{i % 3}/{i}.{['roa', 'mft', 'crl', 'cer'][i % 4]}"
            if i % 5 == 0:
                rel = f"ca{i % 3}/sub/{i}.roa"
            files[rel] = data
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        opts = PublishOptions(
            source_dir=src,
            rsync_base=RsyncUri("rsync://127.0.0.1/repo/"),
            https_base=HttpsUri("https://127.0.0.1/rrdp/"),
            state_dir=root / "state",
            rrdp_dir=root / "rrdp",
            rsync_dir=root / "rsync",
        )
        publish(opts)
        yield World(root, src, files, pool, opts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def serving(world: World, server: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """(base URL, make-the-server-see-a-new-revision) for one of the two servers."""
    if server == "rsyncd":
        with rsync_daemon(world.root / "rsyncd", {"repo": world.current}) as d:
            yield f"rsync://{d.host}:{d.port}/", lambda: None  # resolves `current` per connection
        return
    with rpkirepo_rsyncd({"repo": world.module_dir}) as ours:

        def refresh() -> None:
            ours.call(ours.daemon.refresh)  # type: ignore[attr-defined]
            watcher = ours.daemon.watchers["repo"]  # type: ignore[attr-defined]
            assert watcher.target == Path(os.path.realpath(world.current))

        yield ours.url(), refresh


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            assert not p.is_symlink()
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), p.stat().st_mtime_ns // 10**9)
    return out


def check_result(result: ModuleFetch, dest: Path) -> None:
    """What the result says is what is on disk."""
    on_disk = tree(dest)
    assert {f.path for f in result.files} == set(on_disk)
    for f in result.files:
        assert (len(on_disk[f.path][0]), on_disk[f.path][1]) == (f.size, f.mtime)
    assert result.files_fetched == sum(f.fetched for f in result.files)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("server", SERVERS)
def test_fetch_cycle(world: World, server: str, protocol: int) -> None:
    dests = [world.root / f"d{i}" for i in range(3)]
    for d in dests:
        d.mkdir()
    with serving(world, server) as (base, refresh):
        uri = RsyncUri(base + "repo/")
        # First fetch: every file, exact bytes and mtimes.
        first = fetch_module(uri, dests[0], protocol=protocol)
        assert first.protocol == protocol
        assert tree(dests[0]) == tree(world.current)
        assert {k: v[0] for k, v in tree(dests[0]).items()} == world.files
        assert first.files_fetched == len(world.files) == len(first.files)
        assert set(first.directories) == {"ca0", "ca1", "ca2", "ca0/sub", "ca1/sub", "ca2/sub"}
        assert first.skipped == 0 and first.bytes_received > sum(map(len, world.files.values()))
        check_result(first, dests[0])
        # Second fetch against the first: nothing fetched, everything linked.
        second = fetch_module(uri, dests[1], basis=dests[0], protocol=protocol)
        assert second.files_fetched == 0
        assert not any(f.fetched for f in second.files)
        assert tree(dests[1]) == tree(dests[0])
        for f in second.files:
            assert (dests[1] / f.path).stat().st_ino == (dests[0] / f.path).stat().st_ino
        assert second.bytes_received < first.bytes_received / 4
        # A new revision: only what changed is fetched.
        changed = world.change()
        refresh()
        third = fetch_module(uri, dests[2], basis=dests[1], protocol=protocol)
        assert {f.path for f in third.files if f.fetched} == changed
        assert third.files_fetched == len(changed)
        assert tree(dests[2]) == tree(world.current)
        check_result(third, dests[2])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("server", SERVERS)
def test_subdirectory_missing_path_unknown_module(world: World, server: str, protocol: int) -> None:
    with serving(world, server) as (base, _refresh):
        sub = world.root / "sub"
        sub.mkdir()
        got = fetch_module(RsyncUri(base + "repo/ca1/"), sub, protocol=protocol)
        expected = {k[4:]: v for k, v in world.files.items() if k.startswith("ca1/")}
        assert {k: v[0] for k, v in tree(sub).items()} == expected
        assert {f.path for f in got.files} == set(expected)
        assert got.directories == ("sub",)
        deeper = world.root / "deeper"
        deeper.mkdir()
        got = fetch_module(RsyncUri(base + "repo/ca1/sub/"), deeper, protocol=protocol)
        assert {f.path for f in got.files} == {k[8:] for k in world.files if "ca1/sub/" in k}
        for name, empty_dest in (("missing", "repo/nonexistent/"), ("unknown", "nosuch/")):
            d = world.root / name
            d.mkdir()
            with pytest.raises(RemoteProtocolError) as info:
                fetch_module(RsyncUri(base + empty_dest), d, protocol=protocol)
            assert info.value.reason is Reason.RSYNC_CLIENT_SERVER_ERROR
            text = "No such file or directory" if name == "missing" else "Unknown module"
            assert text in info.value.detail, info.value
            assert list(d.iterdir()) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("server", SERVERS)
def test_compressed_and_filtered(world: World, server: str, protocol: int) -> None:
    with serving(world, server) as (base, _refresh):
        uri = RsyncUri(base + "repo/")
        z = world.root / "z"
        z.mkdir()
        got = fetch_module(uri, z, protocol=protocol, compress=True)
        assert tree(z) == tree(world.current)
        assert got.files_fetched == len(world.files)
        roas = world.root / "roas"
        roas.mkdir()
        got = fetch_module(uri, roas, protocol=protocol, include_extensions=("roa", "crl"))
        wanted = {k for k in world.files if k.endswith((".roa", ".crl"))}
        assert {f.path for f in got.files} == set(tree(roas)) == wanted
        # max_object_size and min_size: skipped, never requested.
        small = world.root / "small"
        small.mkdir()
        sizes = sorted(len(v) for v in world.files.values())
        cap = DEFAULT_LIMITS.override({"max_object_size": sizes[len(sizes) // 2]})
        got = fetch_module(uri, small, protocol=protocol, limits=cap, min_size=sizes[1])
        kept = {k for k, v in world.files.items() if sizes[1] <= len(v) <= sizes[len(sizes) // 2]}
        assert {f.path for f in got.files} == set(tree(small)) == kept
        assert got.skipped == len(world.files) - len(kept)


def test_external_variant(world: World) -> None:
    with serving(world, "rsyncd") as (base, refresh):
        uri = RsyncUri(base + "repo/")
        a, b = world.root / "ext-a", world.root / "ext-b"
        a.mkdir()
        b.mkdir()
        first = fetch_module_external(uri, a)
        assert tree(a) == tree(world.current)
        assert first.files_fetched == len(world.files) == len(first.files)
        check_result(first, a)
        changed = world.change()
        refresh()
        second = fetch_module_external(
            uri, b, basis=a, include_extensions=("roa", "mft", "crl", "cer")
        )
        assert {f.path for f in second.files if f.fetched} == changed
        assert tree(b) == tree(world.current)
        check_result(second, b)
        missing = world.root / "ext-missing"
        missing.mkdir()
        with pytest.raises(RemoteProtocolError) as info:
            fetch_module_external(RsyncUri(base + "repo/nonexistent/"), missing)
        assert info.value.reason is Reason.RSYNC_CLIENT_EXTERNAL
