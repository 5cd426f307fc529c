"""Shared pieces of the sync tests: an upstream publication server made of a real testbed
published by ``rpkirepo publish``, and checks of what a mirror serves."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rrdp.model import PublishElement
from rpkirepo.rrdp.parser import iter_events, parse_notification
from rpkirepo.sync.mirror import SyncOptions
from rpkirepo.sync.upstream import DirUpstream, Upstream
from rpkirepo.testbed import TestbedOptions, advance, generate
from rpkirepo.uri import HttpsUri, RsyncUri

RSYNC_BASE = "rsync://localhost/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"
NOTIFY = HTTPS_BASE + "notification.xml"


@dataclass
class UpstreamServer:
    """A testbed and the publisher that serves it (the hidden server of a mirror)."""

    root: Path
    https_base: str = HTTPS_BASE

    @property
    def testbed(self) -> Path:
        return self.root / "tb"

    @property
    def rrdp(self) -> Path:
        return self.root / "up" / "rrdp"

    def create(self, cas: int = 2, roas: int = 3, seed: int = 1) -> UpstreamServer:
        generate(
            TestbedOptions(
                self.testbed,
                rsync_base=RSYNC_BASE,
                cas=cas,
                roas_per_ca=roas,
                depth=min(2, cas),
                seed=seed,
            )
        )
        self.publish()
        return self

    def publish(self, **kw: object) -> None:
        up = self.root / "up"
        publish(
            PublishOptions(
                source_dir=self.testbed / "repository",
                rsync_base=RsyncUri.parse(RSYNC_BASE),
                https_base=HttpsUri.parse(self.https_base),
                rrdp_dir=up / "rrdp",
                rsync_dir=up / "rsync",
                state_dir=up / "state",
                **kw,  # type: ignore[arg-type]
            )
        )

    def advance(self, steps: int = 1, *, roll_key: bool = False) -> None:
        for _ in range(steps):
            advance(self.testbed, roll_key=roll_key)
            self.publish()

    def objects(self) -> dict[str, bytes]:
        repo = self.testbed / "repository"
        return {
            p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()
        }

    def mtimes(self) -> dict[str, int]:
        current = (self.root / "up" / "rsync" / "current").resolve()
        return {
            p.relative_to(current).as_posix(): int(p.stat().st_mtime)
            for p in current.rglob("*")
            if p.is_file()
        }


def mirror_options(root: Path, upstream: Upstream | Path, **kw: object) -> SyncOptions:
    source = DirUpstream(upstream) if isinstance(upstream, Path) else upstream
    return SyncOptions(
        notification_uri=HttpsUri.parse(NOTIFY),
        upstream=source,
        state_dir=root / "state",
        rrdp_dir=root / "rrdp",
        rsync_dir=root / "rsync",
        **kw,  # type: ignore[arg-type]
    )


def served_snapshot(rrdp: Path) -> dict[str, bytes]:
    """The objects of the served notification's snapshot, after checking that every file it
    names exists with the hash it lists (and that each .gz sibling decodes to it)."""
    import gzip

    n = parse_notification((rrdp / "notification.xml").read_bytes())
    files = [(n.snapshot.uri, n.snapshot.hash)] + [(d.uri, d.hash) for d in n.deltas]
    for uri, digest in files:
        path = rrdp / uri.uri[len(HTTPS_BASE) :]
        data = path.read_bytes()
        assert hashlib.sha256(data).digest() == digest.digest, f"{path} hash"
        assert gzip.decompress((path.parent / (path.name + ".gz")).read_bytes()) == data
    snap = (rrdp / n.snapshot.uri.uri[len(HTTPS_BASE) :]).read_bytes()
    return {
        e.uri.uri[len(RSYNC_BASE) :]: e.data
        for e in iter_events([snap])
        if isinstance(e, PublishElement)
    }


def tree(rsync: Path) -> dict[str, bytes]:
    current = (rsync / "current").resolve()
    out = {}
    for dirpath, _d, names in os.walk(current):
        for name in names:
            p = Path(dirpath) / name
            out[p.relative_to(current).as_posix()] = p.read_bytes()
    return out


def tree_mtimes(rsync: Path) -> dict[str, int]:
    current = (rsync / "current").resolve()
    return {
        p.relative_to(current).as_posix(): int(p.stat().st_mtime)
        for p in current.rglob("*")
        if p.is_file()
    }
