"""The real rsync client against the real rsync daemon serving what `rpkirepo publish` wrote.

What RPs rely on (RFC 9589, the publication-server BCP): after the first fetch, a re-sync with
rsync's quick check (size + mtime) transfers exactly the objects that changed, deletes exactly the
ones withdrawn, and touches no directory; and what arrives carries the RFC 9589 mtimes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from peers import public_dir, rsync_daemon
from rpkirepo.objects import mtime_of
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.uri import HttpsUri, RsyncUri

pytestmark = pytest.mark.peer

RSYNC_ARGS = ["-rtz", "--delete", "--itemize-changes", "--timeout=30", "--contimeout=10"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory the daemon (dropping to 'nobody' when run as root) can enter."""
    require_peer("rsync")
    root = Path(tempfile.mkdtemp(prefix="rpkirepo-rsync-"))
    public_dir(root)
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _objects(corpus_dir: Path) -> list[tuple[str, bytes]]:
    files = sorted((corpus_dir / "objects").rglob("*"))
    return [
        (p.name, p.read_bytes())
        for p in files
        if p.suffix in (".roa", ".mft", ".crl", ".cer") and p.stat().st_size > 200
    ]


def _sync(url: str, dest: Path) -> list[str]:
    out = subprocess.run(
        ["rsync", *RSYNC_ARGS, url, str(dest) + "/"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line.strip()]


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), int(p.stat().st_mtime))
    return out


def test_rsync_clients_fetch_only_what_changed(world: Path, corpus_dir: Path) -> None:
    rng = random.Random(11)
    pool = _objects(corpus_dir)
    src = public_dir(world / "src")
    files: dict[str, bytes] = {}
    for i, (name, data) in enumerate(rng.sample(pool, 60)):
        rel = f"ca{i % 5}/{i}-{name}"
        files[rel] = data
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    opts = PublishOptions(
        source_dir=src,
        rsync_base=RsyncUri("rsync://127.0.0.1/repo/"),
        https_base=HttpsUri("https://127.0.0.1/rrdp/"),
        state_dir=world / "state",
        rrdp_dir=world / "rrdp",
        rsync_dir=world / "rsync",
    )
    publish(opts)
    dest = world / "client"
    dest.mkdir()
    with rsync_daemon(public_dir(world / "daemon"), {"repo": world / "rsync" / "current"}) as d:
        url = d.url("repo")
        first = _sync(url, dest)
        assert sum(1 for line in first if line.startswith(">f")) == len(files)
        got = _tree(dest)
        assert {k: v[0] for k, v in got.items()} == files
        for rel, (data, mtime) in got.items():
            t = mtime_of(data, rel)
            assert t.seconds >= 0 and mtime == t.seconds, rel  # RFC 9589 rule survived rsync

        # Nothing changed: the quick check sends nothing and touches no directory.
        again = _sync(url, dest)
        assert [line for line in again if not line.startswith(".d")] == [], again
        assert not any(line.startswith(".d") and "t" in line[:12] for line in again), again

        # Change three objects, add one, withdraw one.
        names = sorted(files)
        changed = names[:3]
        for rel in changed:
            files[rel] = next(d for _n, d in pool if d != files[rel])
            (src / rel).write_bytes(files[rel])
        added = "ca9/new.roa"
        files[added] = pool[0][1]
        (src / added).parent.mkdir()
        (src / added).write_bytes(files[added])
        gone = names[-1]
        (src / gone).unlink()
        del files[gone]
        publish(opts)
        third = _sync(url, dest)
        sent = {line.split(None, 1)[1] for line in third if line.startswith(">f")}
        deleted = {line.split(None, 1)[1] for line in third if line.startswith("*deleting")}
        assert sent == {*changed, added}
        assert deleted == {gone}
        assert {k: v[0] for k, v in _tree(dest).items()} == files
