"""The real rpki-client accepts what `rpkirepo publish` writes, over RRDP and over rsync.

The corpus's Krill test repository (rrdp/krill-sync/validation/good/, published at
rsync://localhost/repo/, TA and TAL beside it) is decoded into a source directory and published
with the real CLI.  The real nginx serves the RRDP files over TLS on localhost:3000 and the TA
certificate, the real rsync daemon serves the rsync tree on localhost:873 (both fixed by the TAL
and by the TA's SIA), and rpki-client validates the repository over RRDP (its default) and over
rsync only (-R).  Each run must fetch by the expected transport without falling back, print no
warning, validate every object and produce exactly the VRPs computed here from the ROAs.  Further
tests follow deltas across republished serials and check the .gz siblings through nginx.  A
control serves Krill's own RRDP files the same way, so that a failure of the rpkirepo run can be
told apart from a broken harness.

See docs/testing.md for the TLS trust and name arrangement, what each test asserts, and how
to debug a failure."""

from __future__ import annotations

import base64
import gzip
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_peer
from peers import (
    NginxServer,
    RpkiClientResult,
    RsyncServer,
    TlsCa,
    ValidityWindow,
    expected_vrps,
    https_get,
    make_readable,
    make_tls_ca,
    nginx_tls,
    public_dir,
    rpki_client_supports_epoch,
    rsync_daemon,
    run_rpki_client,
    unexpected_lines,
    validity_window,
)

pytestmark = pytest.mark.peer

RRDP_NS = "{http://www.ripe.net/rpki/rrdp}"
KRILL_RRDP = Path("rrdp/krill-sync/validation/good/rrdp")
KRILL_TA = Path("objects/cer/krill-sync/ta.cer")
KRILL_TAL = Path("tal/krill-sync/ta.tal")
# Fixed by the TAL (https://localhost:3000/ta/ta.cer, rsync://localhost/ta/ta.cer) and by the TA
# certificate's SIA (rsync://localhost/repo/, https://localhost:3000/rrdp/notification.xml).
RSYNC_BASE = "rsync://localhost/repo/"
HTTPS_BASE = "https://localhost:3000/rrdp/"
HTTPS_PORT = 3000
RSYNC_PORT = 873
NOTIFY_URI = HTTPS_BASE + "notification.xml"

# Every line rpki-client 8.x prints on stderr with -v when all goes well.  Anything else (a
# warning about an object, a TLS or HTTP error, a fallback) fails the test and is quoted.
EXPECTED_STDERR = [
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: downloading \d+ deltas?",
    r"rpki-client: \S+: (repository|notification file) not modified",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: all files parsed: generating output",
]


@dataclass(frozen=True)
class Repository:
    """The decoded Krill repository and everything expected of a validator for it."""

    source: Path  # objects at their paths below rsync://localhost/repo/
    files: frozenset[str]
    vrps: frozenset[tuple[int, str, int]]
    window: ValidityWindow
    counts: dict[str, int]  # file suffix -> number of files


@dataclass(frozen=True)
class Served:
    """One repository served by nginx (RRDP, TA) and the rsync daemon (repo, ta)."""

    name: str
    rrdp_dir: Path
    nginx: NginxServer
    rsync: RsyncServer
    tls: TlsCa
    source: Path | None = None  # what `rpkirepo publish` reads (None for the control)
    publish_dir: Path | None = None  # its state, rrdp and rsync directories

    def session_and_serial(self) -> tuple[str, int]:
        note = notification(self.rrdp_dir)
        return note.get("session_id", ""), int(note.get("serial", "-1"))


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def peer_root() -> Iterator[Path]:
    """A world-traversable scratch directory: the servers run as 'nobody' and rpki-client as
    _rpki-client, which cannot enter pytest's 0700 tmp_path.  Kept when RPKIREPO_KEEP_PEER_DIRS
    is set (the path is printed)."""
    if os.geteuid() != 0:
        # unshare --mount, rsync on port 873 and rpki-client's privilege drop need root.
        message = "peer tests with rpki-client need root (port 873, unshare --mount)"
        if os.environ.get("RPKIREPO_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    for peer in ("nginx", "rsync", "rpki-client", "unshare"):
        require_peer(peer)
    if not rpki_client_supports_epoch(require_peer("rpki-client")):
        require_peer("faketime")  # no -P (e.g. Debian 12's 8.2): libfaketime sets its clock
    root = Path(tempfile.mkdtemp(prefix="rpkirepo-peer-"))
    root.chmod(0o755)
    keep = bool(os.environ.get("RPKIREPO_KEEP_PEER_DIRS"))
    try:
        yield root
    finally:
        if keep:
            print(f"\npeer directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def krill(corpus_dir: Path, peer_root: Path) -> Repository:
    """Decode the snapshot's <publish> elements into a source directory."""
    snapshots = list((corpus_dir / KRILL_RRDP).rglob("snapshot.xml"))
    assert len(snapshots) == 1, snapshots
    source = peer_root / "source"
    files = set()
    for el in ET.parse(snapshots[0]).getroot().iter(RRDP_NS + "publish"):
        uri = el.get("uri", "")
        assert uri.startswith(RSYNC_BASE), uri
        rel = uri[len(RSYNC_BASE) :]
        path = source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode("".join((el.text or "").split())))
        files.add(rel)
    make_readable(source)  # the control serves it with the rsync daemon as 'nobody'
    counts: dict[str, int] = {}
    for rel in files:
        suffix = Path(rel).suffix
        counts[suffix] = counts.get(suffix, 0) + 1
    return Repository(
        source=source,
        files=frozenset(files),
        vrps=frozenset(expected_vrps(source)),
        window=validity_window(source),
        counts=counts,
    )


@pytest.fixture(scope="module")
def tls(peer_root: Path) -> TlsCa:
    return make_tls_ca(peer_root / "tls", names=("localhost",))


@pytest.fixture(scope="module")
def ta_dir(corpus_dir: Path, peer_root: Path) -> Path:
    d = public_dir(peer_root / "ta")
    shutil.copyfile(corpus_dir / KRILL_TA, d / "ta.cer")
    (d / "ta.cer").chmod(0o644)
    return d


def publish_args(source: Path, out: Path) -> list[str]:
    return [
        "publish", str(source),
        "--rsync-base", RSYNC_BASE, "--https-base", HTTPS_BASE,
        "--state-dir", str(out / "state"), "--rrdp-dir", str(out / "rrdp"),
        "--rsync-dir", str(out / "rsync"),
    ]  # fmt: skip


def publish(source: Path, out: Path) -> tuple[Path, Path]:
    """Run the real CLI (`python -m rpkirepo publish ...`); return (rrdp dir, rsync module)."""
    argv = [sys.executable, "-m", "rpkirepo", *publish_args(source, out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    check_published(argv, proc.returncode, proc.stdout, proc.stderr)
    return out / "rrdp", out / "rsync" / "current"


def check_published(argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
    if returncode != 0:
        pytest.fail(
            f"rpkirepo publish exited {returncode}\nargv: {argv}\n"
            f"--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        )


class WarmPublish:
    """The real CLI's main() in a process that has already imported rpkirepo and waits for a
    line on stdin before it runs: keeps interpreter start-up out of a timed sequence."""

    def __init__(self, source: Path, out: Path) -> None:
        code = (
            "import sys, rpkirepo.cli, rpkirepo.publish; sys.stdin.readline(); "
            "sys.exit(rpkirepo.cli.main(sys.argv[1:]))"
        )
        self.argv = [sys.executable, "-c", code, *publish_args(source, out)]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self) -> None:
        try:
            stdout, stderr = self.proc.communicate("go\n", timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            raise
        check_published(self.argv, self.proc.returncode, stdout, stderr)

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def notification(rrdp_dir: Path) -> ET.Element:
    root = ET.parse(rrdp_dir / "notification.xml").getroot()
    assert root.tag == RRDP_NS + "notification", root.tag
    return root


@pytest.fixture(scope="module", params=["rpkirepo", "krill-original"])
def served(
    request: pytest.FixtureRequest,
    corpus_dir: Path,
    peer_root: Path,
    krill: Repository,
    tls: TlsCa,
    ta_dir: Path,
) -> Iterator[Served]:
    """'rpkirepo': what `rpkirepo publish` wrote.  'krill-original' (control): Krill's own RRDP
    files from the corpus and the decoded objects as the rsync module."""
    name = request.param
    base = public_dir(peer_root / name)
    source: Path | None = None
    if name == "rpkirepo":
        source = base / "source"  # a copy: test_rpki_client_follows_deltas changes it
        shutil.copytree(krill.source, source)
        make_readable(source)
        rrdp_dir, rsync_module = publish(source, base / "publish")
    else:
        rrdp_dir, rsync_module = corpus_dir / KRILL_RRDP, krill.source
    with (
        nginx_tls(
            base / "nginx",
            tls,
            {"/rrdp/": rrdp_dir, "/ta/ta.cer": ta_dir / "ta.cer"},
            port=HTTPS_PORT,
            binary=require_peer("nginx"),
        ) as nginx,
        rsync_daemon(
            base / "rsyncd",
            {"repo": rsync_module, "ta": ta_dir},
            port=RSYNC_PORT,
            binary=require_peer("rsync"),
        ) as rsync,
    ):
        yield Served(
            name=name,
            rrdp_dir=rrdp_dir,
            nginx=nginx,
            rsync=rsync,
            tls=tls,
            source=source,
            publish_dir=base / "publish" if source else None,
        )


@dataclass(frozen=True)
class Run:
    """One rpki-client run and where the servers' logs stood when it started."""

    result: RpkiClientResult
    nginx_mark: int
    rsync_mark: int
    served: Served

    def requests(self) -> list[tuple[object, object]]:
        """(uri, status) of every HTTPS request nginx logged during the run."""
        return [(e["uri"], e["status"]) for e in self.served.nginx.access_entries(self.nginx_mark)]

    def rsync_requests(self) -> list[str]:
        since = self.rsync_mark
        return self.served.rsync.module_requests("repo", since) + (
            self.served.rsync.module_requests("ta", since)
        )

    def context(self) -> str:
        """Everything needed to understand a failure: rpki-client's output, the servers' logs."""
        return (
            f"{self.result.describe()}\n{self.served.nginx.logs()}\n"
            f"--- rsyncd log during the run ---\n{self.served.rsync.log_text(self.rsync_mark)}"
        )


def validate(
    served: Served,
    krill: Repository,
    corpus_dir: Path,
    peer_root: Path,
    *,
    rsync_only: bool,
    mode: str = "",
) -> Run:
    """Run rpki-client in workdir rpki-client-MODE (a second run with the same mode reuses its
    cache)."""
    mode = mode or ("rsync" if rsync_only else "rrdp")
    nginx_mark, rsync_mark = served.nginx.mark(), served.rsync.mark()
    result = run_rpki_client(
        peer_root / served.name / f"rpki-client-{mode}",
        corpus_dir / KRILL_TAL,
        binary=require_peer("rpki-client"),
        trust=served.tls.ca_cert,
        hosts={"localhost": "127.0.0.1"},
        evaluation_time=krill.window.middle,
        rsync_only=rsync_only,
        shortlist=("localhost",),
    )
    return Run(result, nginx_mark, rsync_mark, served)


def url_path(uri: str) -> str:
    return urllib.parse.urlsplit(uri).path


def assert_accepted(run: Run, krill: Repository) -> None:
    """Exit 0, no warning, every object validated, exactly the expected VRPs."""
    result, ctx = run.result, run.context()
    assert result.returncode == 0, ctx
    warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
    assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n\n" + ctx

    meta = result.metadata()
    expected_meta = {
        "tals": 1,
        "invalidtals": 0,
        "roas": krill.counts.get(".roa", 0),
        "failedroas": 0,
        "invalidroas": 0,
        "manifests": krill.counts.get(".mft", 0),
        "failedmanifests": 0,
        "stalemanifests": 0,
        "crls": krill.counts.get(".crl", 0),
        "certificates": krill.counts.get(".cer", 0) + 1,  # + the TA certificate
        "invalidcertificates": 0,
    }
    assert {k: meta.get(k) for k in expected_meta} == expected_meta, ctx
    # The clock rpki-client ran with is inside every object's validity.
    assert krill.window.start.strftime("%Y-%m-%dT%H:%M:%SZ") <= str(meta["buildtime"]), ctx
    assert str(meta["buildtime"]) <= krill.window.end.strftime("%Y-%m-%dT%H:%M:%SZ"), ctx

    assert result.vrps() == krill.vrps, (
        f"missing: {sorted(krill.vrps - result.vrps())}\n"
        f"unexpected: {sorted(result.vrps() - krill.vrps)}\n{ctx}"
    )
    assert result.csv_vrps() == krill.vrps, ctx

    # The validated cache holds exactly the published objects at their rsync paths.
    repo_cache = result.cachedir / "localhost" / "repo"
    cached = {str(p.relative_to(repo_cache)) for p in repo_cache.rglob("*") if p.is_file()}
    assert cached == set(krill.files), (
        f"missing: {sorted(krill.files - cached)}\nextra: {sorted(cached - krill.files)}\n{ctx}"
    )


# --------------------------------------------------------------------------------------------
# tests

# For tests about what rpkirepo itself publishes (the control is not published by it).
ONLY_RPKIREPO = pytest.mark.parametrize("served", ["rpkirepo"], indirect=True)


def test_rpki_client_over_rrdp(
    served: Served, krill: Repository, corpus_dir: Path, peer_root: Path
) -> None:
    run = validate(served, krill, corpus_dir, peer_root, rsync_only=False)
    result, ctx = run.result, run.context()
    assert_accepted(run, krill)

    # RRDP, from the snapshot, and no fallback to rsync.
    assert f"rpki-client: {NOTIFY_URI}: downloading snapshot" in result.stderr, ctx
    assert f"rpki-client: {NOTIFY_URI}: loaded from network" in result.stderr, ctx
    assert "rpki-client: ta/ta: pulling from https://localhost:3000/ta/ta.cer" in result.stderr, ctx
    assert "rsync://localhost/repo" not in result.stderr, ctx
    assert run.rsync_requests() == [], "rpki-client used rsync in RRDP mode\n" + ctx

    # What nginx served: the TA, the notification and the snapshot it names, over TLS to SNI
    # localhost, all 200.
    snapshot_uri = rrdp_uris(served.rrdp_dir)[0]
    assert snapshot_uri.startswith(HTTPS_BASE), snapshot_uri
    assert run.requests() == [
        ("/ta/ta.cer", 200),
        ("/rrdp/notification.xml", 200),
        (url_path(snapshot_uri), 200),
    ], ctx
    assert {e["sni"] for e in served.nginx.access_entries(run.nginx_mark)} == {"localhost"}, ctx

    # rpki-client's RRDP state is the session and serial of the notification.
    assert rrdp_state(result) == served.session_and_serial(), ctx


def rrdp_uris(rrdp_dir: Path) -> list[str]:
    """The snapshot URI, then the delta URIs, of the notification in ``rrdp_dir``."""
    note = notification(rrdp_dir)
    snapshots = [el.get("uri", "") for el in note.iter(RRDP_NS + "snapshot")]
    assert len(snapshots) == 1, snapshots
    return snapshots + [el.get("uri", "") for el in note.iter(RRDP_NS + "delta")]


def delta_uri(rrdp_dir: Path, serial: int) -> str:
    (uri,) = [
        el.get("uri", "")
        for el in notification(rrdp_dir).iter(RRDP_NS + "delta")
        if el.get("serial") == str(serial)
    ]
    return uri


def rrdp_state(result: RpkiClientResult) -> tuple[str, int]:
    """(session, serial) rpki-client recorded for the repository (cache/.rrdp/*/.state)."""
    (state,) = list((result.cachedir / ".rrdp").glob("*/.state"))
    session_id, serial = state.read_text().splitlines()[:2]
    return session_id, int(serial)


def test_rpki_client_over_rsync(
    served: Served, krill: Repository, corpus_dir: Path, peer_root: Path
) -> None:
    run = validate(served, krill, corpus_dir, peer_root, rsync_only=True)
    result, ctx = run.result, run.context()
    assert_accepted(run, krill)

    assert "rpki-client: ta/ta: pulling from rsync://localhost/ta/ta.cer" in result.stderr, ctx
    assert re.search(
        r"^rpki-client: \S+: pulling from rsync://localhost/repo$", result.stderr, re.M
    ), ctx
    assert "https://" not in result.stderr, ctx
    assert run.requests() == [], "HTTPS used with -R\n" + ctx
    # The daemon sent every object, and nothing else, from the module.
    sent = {f for f in served.rsync.sent_files("repo", run.rsync_mark) if not f.endswith("/")}
    assert sent == set(krill.files), (
        f"not sent: {sorted(krill.files - sent)}\nextra: {sorted(sent - krill.files)}\n{ctx}"
    )


@ONLY_RPKIREPO
def test_nginx_serves_the_gz_siblings(served: Served) -> None:
    """rpki-client 8.2 asks for identity encoding, so check the .gz siblings rpkirepo wrote
    through nginx's gzip_static directly: same bytes as the XML once decompressed."""
    paths = ["/rrdp/notification.xml"] + [url_path(u) for u in rrdp_uris(served.rrdp_dir)]
    for path in paths:
        status, headers, plain = https_get(
            served.tls, served.nginx.port, path, {"Accept-Encoding": "identity"}
        )
        assert (status, headers.get("content-encoding")) == (200, None), path
        status, headers, packed = https_get(
            served.tls, served.nginx.port, path, {"Accept-Encoding": "gzip"}
        )
        assert (status, headers.get("content-encoding")) == (200, "gzip"), (
            path,
            served.nginx.logs(),
        )
        assert gzip.decompress(packed) == plain, path


@ONLY_RPKIREPO
def test_rpki_client_follows_deltas(
    served: Served, krill: Repository, corpus_dir: Path, peer_root: Path
) -> None:
    """Publish a change (an extra object nothing refers to), then take it back: rpki-client,
    keeping its cache, follows each new serial by one delta (a publish, then a withdraw with
    its hash) and still validates everything.  Ends with the original content published.

    Each publish starts in a new wall-clock second: see
    test_rpki_client_sees_two_serials_published_within_one_second for why."""
    assert served.source is not None and served.publish_dir is not None
    session_id, serial = served.session_and_serial()

    def check(expected_serial: int, fetch: str) -> None:
        run = validate(served, krill, corpus_dir, peer_root, rsync_only=False, mode="rrdp-deltas")
        ctx = run.context()
        assert_accepted(run, krill)
        assert f"rpki-client: {NOTIFY_URI}: {fetch}" in run.result.stderr, ctx
        assert rrdp_state(run.result) == (session_id, expected_serial), ctx
        if fetch == "downloading snapshot":
            want = rrdp_uris(served.rrdp_dir)[0]
        else:
            want = delta_uri(served.rrdp_dir, expected_serial)
        assert run.requests() == [
            ("/ta/ta.cer", 200),
            ("/rrdp/notification.xml", 200),
            (url_path(want), 200),
        ], ctx

    check(serial, "downloading snapshot")
    some_roa = sorted(served.source.rglob("*.roa"))[0]
    extra = served.source / "extra" / some_roa.name
    extra.parent.mkdir()
    try:
        shutil.copyfile(some_roa, extra)
        wait_for_next_second()
        publish(served.source, served.publish_dir)
        assert served.session_and_serial() == (session_id, serial + 1)
        check(serial + 1, "downloading 1 deltas")
    finally:
        shutil.rmtree(extra.parent)
        wait_for_next_second()
        publish(served.source, served.publish_dir)
    assert served.session_and_serial() == (session_id, serial + 2)
    check(serial + 2, "downloading 1 deltas")


def wait_for_next_second() -> None:
    now = time.time()
    time.sleep(math.floor(now) + 1.01 - now)


@ONLY_RPKIREPO
def test_rpki_client_sees_two_serials_published_within_one_second(
    served: Served, krill: Repository, corpus_dir: Path, peer_root: Path
) -> None:
    """publish serial N+1, rpki-client fetches it, publish serial N+2, all within one second:
    rpki-client must still see N+2.  (Regression test: the notification's mtime, hence HTTP
    Last-Modified, once stayed the same within a second, so nginx answered rpki-client's
    If-Modified-Since with 304 and it stayed on N+1.  The mtime now advances every serial,
    so this holds whether or not the steps fit in one second.)"""
    assert served.source is not None and served.publish_dir is not None
    session_id, serial = served.session_and_serial()
    some_roa = sorted(served.source.rglob("*.roa"))[0]
    extra = served.source / "extra-same-second" / some_roa.name
    extra.parent.mkdir()
    shutil.copyfile(some_roa, extra)
    warm = [WarmPublish(served.source, served.publish_dir) for _ in range(2)]
    try:
        time.sleep(0.5)  # let both import rpkirepo
        wait_for_next_second()
        warm[0].run()
        first = validate(
            served, krill, corpus_dir, peer_root, rsync_only=False, mode="rrdp-same-second"
        )
        shutil.rmtree(extra.parent)
        warm[1].run()
    finally:
        for w in warm:
            w.close()
        if extra.parent.exists():
            shutil.rmtree(extra.parent)
            publish(served.source, served.publish_dir)
    assert_accepted(first, krill)
    assert rrdp_state(first.result) == (session_id, serial + 1), first.context()
    assert served.session_and_serial() == (session_id, serial + 2)
    second = validate(
        served, krill, corpus_dir, peer_root, rsync_only=False, mode="rrdp-same-second"
    )
    assert_accepted(second, krill)
    stale = rrdp_state(second.result) != (session_id, serial + 2)
    assert not stale, (
        f"rpki-client stayed on serial {rrdp_state(second.result)[1]}; "
        f"nginx answered {second.requests()}\n" + second.context()
    )
