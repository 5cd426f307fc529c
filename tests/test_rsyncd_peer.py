"""The real rsync client (Debian's rsync 3.x) against rpkirepo's rsync daemon, on loopback.

Each relying party's argument list from rsync-wire.md §6 is run at --protocol=31, 30 and 27 on a
tree written by ``rpkirepo publish``: first sync (every file, exact bytes and RFC 9589 mtimes),
a no-change re-sync (the quick check sends nothing), a new revision (only the changed files are
sent; with --delete, withdrawn and stale files are removed), then the listing, --compare-dest,
-c, single paths and the refusals a client must see (unknown module, missing path, push).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_peer
from peers import RpkirepoRsyncd, public_dir, rpkirepo_rsyncd
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rsync._model import COMMON_FLIST
from rpkirepo.uri import HttpsUri, RsyncUri

pytestmark = pytest.mark.peer

EXTS = ("cer", "crl", "gbr", "mft", "roa", "asa", "tak", "spl")
RP_ARGS = {
    # rpki-client rsync.c (Debian's rsync, not openrsync)
    "rpki-client": [
        "-rtO", "--no-motd", "--min-size=100", "--max-size=8000000", "--contimeout=15",
        "--timeout=30", "--include=*/", *[f"--include=*.{e}" for e in EXTS], "--exclude=*",
    ],
    # Routinator
    "routinator": ["--no-motd", "-z", "--contimeout=10", "--max-size=20000000", "-rtO", "--delete"],
    # FORT (HEAD)
    "fort": [
        "-rtz", "--delete", "--omit-dir-times", "--contimeout=20", "--max-size=20MB",
        "--timeout=15", "--exclude=.*", "--include=*/",
        *[f"--include=*.{e}" for e in ("cer", "roa", "asa", "mft", "crl", "gbr")], "--exclude=*",
    ],
}  # fmt: skip
PROTOCOLS = (31, 30, 27)


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

    def publish(self) -> None:
        publish(self.opts)

    def change(self, rng: random.Random) -> tuple[set[str], str, str]:
        """Rewrite three objects, add one, withdraw one; publish; return (changed, added,
        gone)."""
        names = sorted(self.files)
        changed = set(names[:3])
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
        self.publish()
        return changed, added, gone


@pytest.fixture
def world(corpus_dir: Path) -> Iterator[World]:
    require_peer("rsync")
    root = Path(tempfile.mkdtemp(prefix="rpkirepo-rsyncd-"))
    public_dir(root)
    try:
        rng = random.Random(6)
        objects = sorted((corpus_dir / "objects").rglob("*"))
        pool = [
            p.read_bytes()
            for p in objects
            if p.suffix in (".roa", ".mft", ".crl", ".cer") and p.stat().st_size > 200
        ]
        src = public_dir(root / "src")
        files: dict[str, bytes] = {}
        for i, data in enumerate(rng.sample(pool, 40)):
            rel = f"ca{i % 4}/{i}.{['roa', 'mft', 'crl', 'cer'][i % 4]}"
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
        w = World(root, src, files, pool, opts)
        w.publish()
        yield w
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rsync(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"rsync {args} exited {proc.returncode}\n{proc.stderr}\n{proc.stdout}")
    # rsync >= 3.2.5 re-checks the list against its own filters (rsync-wire §9.17).
    assert "rejecting" not in proc.stderr, proc.stderr
    if check:
        assert proc.stderr == "", proc.stderr
    return proc


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), int(p.stat().st_mtime))
    return out


def itemized(stdout: str, prefix: str) -> set[str]:
    return {line.split(None, 1)[1] for line in stdout.splitlines() if line.startswith(prefix)}


def wait_for_revision(d: RpkirepoRsyncd, module_dir: Path) -> None:
    """Make the daemon pick up the new ``current`` now (instead of waiting for its poll)."""
    target = Path(os.path.realpath(module_dir / "current"))
    d.call(d.daemon.refresh)  # type: ignore[attr-defined]
    watcher = d.daemon.watchers["repo"]  # type: ignore[attr-defined]
    assert watcher.target == target


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("rp", sorted(RP_ARGS))
def test_relying_party_sync_cycle(world: World, rp: str, protocol: int) -> None:
    args = [*RP_ARGS[rp], f"--protocol={protocol}", "--itemize-changes"]
    deletes = "--delete" in args
    dest = world.root / "client"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        url = d.url("repo/")
        # First sync: every file, byte for byte, with the served mtimes.
        first = rsync(*args, url, f"{dest}/")
        initial = len(world.files)
        assert itemized(first.stdout, ">f") == set(world.files)
        served = tree(world.module_dir / "current")
        assert tree(dest) == served
        assert {k: v[0] for k, v in served.items()} == world.files
        # No change: nothing sent, nothing deleted.
        again = rsync(*args, url, f"{dest}/")
        assert [x for x in again.stdout.splitlines() if not x.startswith(".d")] == []
        # A new revision, and a stale file only --delete removes.
        (dest / "ca0" / "stale.roa").write_bytes(world.pool[1])
        changed, added, gone = world.change(random.Random(1))
        wait_for_revision(d, world.module_dir)
        third = rsync(*args, url, f"{dest}/")
        assert itemized(third.stdout, ">f") == {*changed, added}
        got = tree(dest)
        if deletes:
            assert itemized(third.stdout, "*deleting") == {gone, "ca0/stale.roa"}
            assert got == tree(world.module_dir / "current")
        else:
            assert itemized(third.stdout, "*deleting") == set()
            assert gone in got and "ca0/stale.roa" in got
            del got[gone], got["ca0/stale.roa"]
            assert got == tree(world.module_dir / "current")
        assert d.daemon.counters.refusals == {}  # type: ignore[attr-defined]
        assert d.daemon.counters.files_sent == initial + len(changed) + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_diff_r_and_stats_after_full_sync(world: World, protocol: int) -> None:
    dest = world.root / "plain"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        out = rsync("-rt", "--stats", f"--protocol={protocol}", d.url("repo/"), f"{dest}/")
        assert f"Number of regular files transferred: {len(world.files)}" in out.stdout
        subprocess.run(["diff", "-r", str(dest), str(world.module_dir / "current")], check=True)
        # At protocol >= 30 the full sync's runs came from the revision's spool (sendfile).
        spooled = d.daemon.counters.spool_bytes_sent  # type: ignore[attr-defined]
        assert (spooled > 0) == (protocol >= 30)
        for rel in world.files:
            a, b = (dest / rel).stat(), (world.module_dir / "current" / rel).stat()
            assert int(a.st_mtime) == int(b.st_mtime) and a.st_size == b.st_size
        # Directory mtimes too (the publisher's constant), since -t without -O sets them.
        for sub in ("ca0", "ca1"):
            assert int((dest / sub).stat().st_mtime) == int(
                (world.module_dir / "current" / sub).stat().st_mtime
            )
        again = rsync("-rt", "--stats", f"--protocol={protocol}", d.url("repo/"), f"{dest}/")
        assert "Number of regular files transferred: 0" in again.stdout
        # -c: checksums in the file list agree with the data, so nothing is sent either.
        check = rsync("-rtc", "-i", f"--protocol={protocol}", d.url("repo/"), f"{dest}/")
        assert itemized(check.stdout, ">f") == set()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compare_dest_sends_only_what_differs(world: World, protocol: int) -> None:
    base, dest = world.root / "base", world.root / "new"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        rsync("-rtz", f"--protocol={protocol}", d.url("repo/"), f"{base}/")
        changed, added, _gone = world.change(random.Random(2))
        wait_for_revision(d, world.module_dir)
        out = rsync(
            "-rtz", "-i", f"--protocol={protocol}", f"--compare-dest={base}",
            d.url("repo/"), f"{dest}/",
        )  # fmt: skip
        assert itemized(out.stdout, ">f") == {*changed, added}
        assert {k for k, _ in tree(dest).items()} == {*changed, added}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_listing_paths_and_refusals(world: World, protocol: int) -> None:
    p = f"--protocol={protocol}"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        modules = rsync(p, d.url())
        assert [line.split()[0] for line in modules.stdout.splitlines()] == ["repo"]
        top = rsync(p, d.url("repo/"))
        names = [line.split()[-1] for line in top.stdout.splitlines()]
        assert sorted(names) == [".", "ca0", "ca1", "ca2", "ca3"]
        one = sorted(world.files)[0]
        single = rsync(p, d.url(f"repo/{one}"))
        assert single.stdout.split()[-1] == one.rsplit("/", 1)[1]
        sub = world.root / "sub"
        rsync("-rt", p, d.url("repo/ca1"), f"{sub}/")
        assert {k for k in tree(sub)} == {
            f"ca1/{k.split('/')[1]}" for k in world.files if k.startswith("ca1/")
        }
        missing = rsync("-rt", p, d.url("repo/nonexistent/"), f"{sub}/", check=False)
        assert missing.returncode == 23 and "No such file or directory" in missing.stderr
        unknown = rsync("-rt", p, d.url("nosuch/"), f"{sub}/", check=False)
        assert unknown.returncode == 5 and "Unknown module" in unknown.stderr
        push = rsync("-rt", p, str(world.src) + "/", d.url("repo/"), check=False)
        assert push.returncode != 0 and "read only" in push.stderr
        refused = rsync("-rtH", p, d.url("repo/"), f"{sub}/", check=False)
        assert refused.returncode != 0 and "not supported" in refused.stderr
        counters = d.daemon.counters  # type: ignore[attr-defined]
        assert counters.refusals["rsync-no-such-path"] == 1
        assert counters.refusals["rsync-unknown-module"] == 1
        assert counters.refusals["rsync-read-only"] == 1
        assert counters.refusals["rsync-argument-refused"] == 1
        # The daemon still serves after all that.
        rsync("-rt", p, d.url("repo/"), f"{world.root / 'after'}/")
        assert {k for k in tree(world.root / "after")} == set(world.files)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "options",
    [["-z", "--compress-level=0"], ["-z", "--compress-level=9"], ["--zc=zlibx"], ["--zc=zlib"],
     ["--new-compress"], ["--old-compress"], ["--checksum-seed=77"], ["-c", "-z"]],
    ids=lambda o: " ".join(o),
)  # fmt: skip
def test_compression_and_seed_variants(world: World, protocol: int, options: list[str]) -> None:
    dest = world.root / "variant"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        rsync("-rt", *options, f"--protocol={protocol}", d.url("repo/"), f"{dest}/")
    assert tree(dest) == tree(world.module_dir / "current")


@pytest.mark.parametrize("protocol", [31, 30])
@pytest.mark.parametrize(
    ("client_list", "options", "said"),
    [
        (None, [], "Client negotiated checksum: xxh128"),
        ("md5", [], "Client negotiated checksum: md5"),  # what rsync < 3.2 would use
        (None, ["--cc=md5"], "Client checksum: md5"),
        (None, ["--cc=xxh128"], "Client checksum: xxh128"),
        (None, ["-z"], "Client negotiated compress: zlibx"),
        (None, ["--compress-level=9"], "Client negotiated compress: zlibx"),  # no -z sent
        (None, ["--compress-level=0"], "Client negotiated compress: zlibx"),  # then: literal
        ("md5 xxh128", [], "Client negotiated checksum: md5"),  # the client's order rules
        (None, ["--zc=zlib"], "Client compress: zlib"),
    ],
)  # fmt: skip
def test_checksum_and_compressor_negotiation(
    world: World,
    protocol: int,
    client_list: str | None,
    options: list[str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rsync >= 3.2 negotiates its checksum (and compressor with -z) with us; whatever it
    ends up with, the whole-file checksums and the ``-c`` list's sums must be right: a second
    ``-c`` run over files whose mtimes were changed transfers nothing, it only sets times."""
    if client_list is not None:
        monkeypatch.setenv("RSYNC_CHECKSUM_LIST", client_list)
    dest = world.root / "negotiated"
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        first = rsync(
            "-rt", "--debug=nstr", *options, f"--protocol={protocol}", d.url("repo/"), f"{dest}/"
        )
        assert said in first.stdout
        assert tree(dest) == tree(world.module_dir / "current")
        for f in dest.rglob("*"):
            if f.is_file():
                os.utime(f, (1_000_000_000, 1_000_000_000))
        again = rsync("-rtci", *options, f"--protocol={protocol}", d.url("repo/"), f"{dest}/")
        changed = [line for line in again.stdout.splitlines() if line[:2] in (">f", "<f")]
        assert changed == [], again.stdout
        assert again.stdout.count(".f..t") == len(world.files)
    assert tree(dest) == tree(world.module_dir / "current")


def test_the_common_list_is_built_at_load_and_filtered_lists_off_the_loop(world: World) -> None:
    """The list ``rsync -rt`` asks for exists as soon as the revision is loaded, so no
    client waits for it; rpki-client's filtered list is built (in a worker thread) once and
    shares the same encoding, since its filters keep every RPKI object."""
    with rpkirepo_rsyncd({"repo": world.module_dir}) as d:
        rev = d.daemon.watchers["repo"].revision  # type: ignore[attr-defined]
        assert list(rev._flists) == [COMMON_FLIST]
        common = rev._flists[COMMON_FLIST]
        rsync("-rt", d.url("repo/"), f"{world.root / 'plain'}/")
        assert list(rev._flists) == [COMMON_FLIST]  # found, not built again
        rsync(*RP_ARGS["rpki-client"], d.url("repo/"), f"{world.root / 'rpki-client'}/")
        assert len(rev._flists) == 2
        filtered = next(v for k, v in rev._flists.items() if k != COMMON_FLIST)
        assert filtered.encoded is common.encoded
    assert tree(world.root / "plain") == tree(world.module_dir / "current")
    assert tree(world.root / "rpki-client") == tree(world.module_dir / "current")
