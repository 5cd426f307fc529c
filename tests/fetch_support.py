"""Shared pieces of the fetch tests: a repository origin made of a real testbed published by
``rpkirepo publish``, its RRDP files and TA certificate served over TLS by the scripted server
(:mod:`hostile_http`, so a test can break any file), and its rsync tree by our rsync daemon on
a port fixed before the testbed is generated (the port is part of every rsync URI)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hostile_http import HostileServer, tls_server_context
from peers import LOOPBACK4, TlsCa, free_port, make_tls_ca, rpkirepo_rsyncd
from rpkirepo.fetch import FetchOptions, FetchReport, read_tal, run_fetch
from rpkirepo.httpget import HttpOptions
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.testbed import TestbedOptions, advance, generate
from rpkirepo.uri import HttpsUri, RsyncUri


@dataclass
class Origin:
    """A testbed served by HTTPS (RRDP + TA) and rsync on loopback."""

    root: Path
    tls: TlsCa
    https: HostileServer
    rsync_port: int
    cas: int = 3
    depth: int = 2
    pub_points: tuple[tuple[str, str | None], ...] = ()
    extra_https: list[HostileServer] = field(default_factory=list)

    @property
    def testbed(self) -> Path:
        return self.root / "tb"

    @property
    def rsync_base(self) -> str:
        return f"rsync://{LOOPBACK4}:{self.rsync_port}/repo/"

    @property
    def https_base(self) -> str:
        return f"https://{LOOPBACK4}:{self.https.port}/rrdp/"

    @property
    def notify(self) -> str:
        return self.https_base + "notification.xml"

    @property
    def tal(self) -> Path:
        return self.testbed / "ta.tal"

    @property
    def module_dir(self) -> str:
        """The module's directory in the output view: HOST:PORT/MODULE."""
        return f"{LOOPBACK4}:{self.rsync_port}/repo"

    def generate(self, seed: int = 1) -> None:
        generate(
            TestbedOptions(
                self.testbed,
                rsync_base=self.rsync_base,
                rrdp_base=self.https_base,
                ta_uris=(
                    f"https://{LOOPBACK4}:{self.https.port}/ta.cer",
                    self.rsync_base + "ta.cer",
                ),
                cas=self.cas,
                roas_per_ca=2,
                depth=self.depth,
                seed=seed,
                pub_points=self.pub_points,
            )
        )
        self.publish()

    def publish(self) -> None:
        up = self.root / "up"
        publish(
            PublishOptions(
                source_dir=self.testbed / "repository",
                rsync_base=RsyncUri.parse(self.rsync_base),
                https_base=HttpsUri.parse(self.https_base),
                rrdp_dir=up / "rrdp",
                rsync_dir=up / "rsync",
                state_dir=up / "state",
            )
        )
        self.load_files()

    def load_files(self) -> None:
        rrdp = self.root / "up" / "rrdp"
        files = {
            "/rrdp/" + p.relative_to(rrdp).as_posix(): p.read_bytes()
            for p in rrdp.rglob("*")
            if p.is_file() and not p.name.endswith(".gz")
        }
        files["/ta.cer"] = (self.testbed / "ta.cer").read_bytes()
        self.https.files.clear()
        self.https.files.update(files)

    def advance(self) -> None:
        advance(self.testbed)
        self.publish()

    def objects(self) -> dict[str, bytes]:
        """The testbed's main module, as paths below the module."""
        return tree_objects(self.testbed / "repository")

    def mtimes(self) -> dict[str, int]:
        return tree_mtimes(self.testbed / "repository")

    @contextlib.contextmanager
    def rsync(self) -> Iterator[None]:
        with rpkirepo_rsyncd({"repo": self.root / "up" / "rsync"}, port=self.rsync_port):
            yield


@contextlib.contextmanager
def origin(root: Path, **kw: object) -> Iterator[Origin]:
    tls = make_tls_ca(root / "tls")
    with HostileServer(tls=tls_server_context(str(tls.server_cert), str(tls.server_key))) as srv:
        o = Origin(root, tls, srv, free_port(), **kw)  # type: ignore[arg-type]
        o.generate()
        yield o


def fetch(o: Origin, cache: Path, *, limits: Limits = DEFAULT_LIMITS, **kw: object) -> FetchReport:
    opts = FetchOptions(
        cache=cache,
        limits=limits,
        http=HttpOptions(ca_file=o.tls.ca_cert, limits=limits),
        **kw,  # type: ignore[arg-type]
    )
    return run_fetch(opts, tals=[read_tal(o.tal, limits=limits)])


def tree_objects(top: Path) -> dict[str, bytes]:
    """Every file below ``top``, by its path below it."""
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def tree_mtimes(top: Path) -> dict[str, int]:
    return {
        p.relative_to(top).as_posix(): int(p.stat().st_mtime) for p in top.rglob("*") if p.is_file()
    }


def view(cache: Path, module_dir: str) -> dict[str, bytes]:
    """The files of one module in the output view (following the view's symlinks)."""
    top = cache / "objects" / module_dir
    out = {}
    for dirpath, _dirs, names in os.walk(top, followlinks=True):
        for name in names:
            p = Path(dirpath) / name
            out[os.path.relpath(p, top)] = p.read_bytes()
    return out


def view_mtimes(cache: Path, module_dir: str) -> dict[str, int]:
    top = cache / "objects" / module_dir
    return {
        os.path.relpath(Path(d) / n, top): int((Path(d) / n).stat().st_mtime)
        for d, _dirs, names in os.walk(top, followlinks=True)
        for n in names
    }


def snapshot_of_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of everything below ``root``, without following links: to prove
    nothing outside a cache was touched."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
            )
    return out
