"""``rpkirepo fetch`` against real servers and a real validator, on loopback.

A testbed published by ``rpkirepo publish`` is served two ways: by nginx (TLS) and the real
``rsync --daemon``, and by ``rpkirepo serve`` (TLS) and our rsync daemon.  Through each, the walk
from the TAL gives exactly the testbed's objects over RRDP, follows ``testbed advance`` by a delta,
and gives the same objects over rsync only (the native client, and the rsync binary with
--compare-dest).  rpki-client then validates the output view offline (``-n``) and must produce the
testbed's VRPs: the documented way to use the cache (docs/fetch.md).
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from fetch_support import snapshot_of_tree, tree_mtimes, tree_objects, view, view_mtimes
from hostile_http import HostileServer, tls_server_context
from peers import (
    free_port,
    make_readable,
    make_tls_ca,
    peer_scratch,
    public_dir,
    rpkirepo_rsyncd,
    rpkirepo_serve,
    run_rpki_client,
    serve_repository,
)
from rpkirepo.fetch import FetchOptions, read_tal, run_fetch
from rpkirepo.httpget import HttpOptions
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.testbed import TestbedOptions, advance, generate
from rpkirepo.uri import HttpsUri, RsyncUri

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-fetch-", "rpki-client") as path:
        yield path


def _want_vrps(testbed: Path) -> set[tuple[int, str, int]]:
    doc = json.loads((testbed / "expected-vrps.json").read_text())
    return {
        (int(r["asn"]), str(ipaddress.ip_network(r["prefix"])), int(r["maxLength"]))
        for r in doc["roas"]
    }


class _Bed:
    def __init__(self, work: Path, host: str, https_port: int, rsync_port: int, ta_uri: str):
        self.work = work
        self.testbed = work / "testbed"
        self.rsync_base = f"rsync://{host}:{rsync_port}/repo/"
        self.https_base = f"https://{host}:{https_port}/rrdp/"
        self.module_dir = f"{host}:{rsync_port}/repo"
        generate(
            TestbedOptions(
                self.testbed,
                rsync_base=self.rsync_base,
                rrdp_base=self.https_base,
                ta_uris=(ta_uri,),
                cas=4,
                roas_per_ca=3,
                depth=2,
                seed=7,
            )
        )
        self.publish()

    @property
    def out(self) -> Path:
        return self.work / "publish"

    def publish(self) -> None:
        publish(
            PublishOptions(
                source_dir=self.testbed / "repository",
                rsync_base=RsyncUri.parse(self.rsync_base),
                https_base=HttpsUri.parse(self.https_base),
                rrdp_dir=self.out / "rrdp",
                rsync_dir=self.out / "rsync",
                state_dir=self.out / "state",
            )
        )
        make_readable(self.out)

    def objects(self) -> dict[str, bytes]:
        return tree_objects(self.testbed / "repository")

    def mtimes(self) -> dict[str, int]:
        return tree_mtimes(self.testbed / "repository")


def _fetch(bed: _Bed, cache: Path, ca: Path, **kw: object):  # type: ignore[no-untyped-def]
    opts = FetchOptions(cache=cache, http=HttpOptions(ca_file=ca), **kw)  # type: ignore[arg-type]
    return run_fetch(opts, tals=[read_tal(bed.testbed / "ta.tal")])


def _check_walks(
    bed: _Bed, caches: Path, ca: Path, binary: str, served: Callable[[int], None] | None = None
) -> None:
    """``served(serial)`` waits until the servers serve that serial (a server that polls)."""
    outside = snapshot_of_tree(bed.work)
    cache = public_dir(caches / "rrdp")
    report = _fetch(bed, cache, ca)
    [r] = report.repositories
    assert (r.transport, r.outcome) == ("rrdp", "snapshot"), r
    assert view(cache, bed.module_dir) == bed.objects()
    assert view_mtimes(cache, bed.module_dir) == bed.mtimes()
    assert all(p.consistent for p in report.publication_points)
    # rpki-client, offline, on the output view: the documented way to validate the cache
    result = run_rpki_client(
        caches / "rpki-client",
        bed.testbed / "ta.tal",
        binary=binary,
        no_sync=True,
        cachedir=cache / "objects",
    )
    assert result.returncode == 0, result.describe()
    assert result.vrps() == _want_vrps(bed.testbed), result.describe()
    assert view(cache, bed.module_dir) == bed.objects()  # rpki-client changed nothing

    assert snapshot_of_tree(bed.work) == outside  # nothing written outside the caches

    advance(bed.testbed)
    bed.publish()
    if served is not None:
        served(2)
    outside = snapshot_of_tree(bed.work)
    report = _fetch(bed, cache, ca)
    [r] = report.repositories
    assert (r.transport, r.outcome) == ("rrdp", "deltas"), r
    assert view(cache, bed.module_dir) == bed.objects()

    for name, kw in (
        ("native", {}),
        ("native-27", {"rsync_protocol": 27}),
        ("external", {"rsync_external": True}),
    ):
        rcache = public_dir(caches / f"rsync-{name}")
        report = _fetch(bed, rcache, ca, rrdp=False, **kw)
        [r] = report.repositories
        assert (r.transport, r.outcome) == ("rsync", "rsync"), (name, r)
        assert view(rcache, bed.module_dir) == bed.objects(), name
        assert view_mtimes(rcache, bed.module_dir) == bed.mtimes(), name
        # again: the quick check finds every file unchanged, nothing is transferred
        report = _fetch(bed, rcache, ca, rrdp=False, **kw)
        [r] = report.repositories
        assert r.files_fetched_rsync == 0, (name, r)
        assert view(rcache, bed.module_dir) == bed.objects(), name
    assert snapshot_of_tree(bed.work) == outside  # nothing written outside the caches


def test_fetch_from_nginx_and_rsyncd(root: Path) -> None:
    binary = require_peer("rpki-client")
    for peer in ("nginx", "rsync"):
        require_peer(peer)
    work = public_dir(root / "nginx-rsyncd")
    https_port, rsync_port = free_port(), free_port()
    bed = _Bed(
        work / "origin",
        "localhost",
        https_port,
        rsync_port,
        f"https://localhost:{https_port}/ta/ta.cer",
    )
    with serve_repository(
        work / "servers",
        bed.out / "rrdp",
        bed.out / "rsync",
        bed.testbed / "ta.cer",
        https_port,
        rsync_port,
    ) as served:
        _check_walks(bed, public_dir(work / "caches"), served.tls.ca_cert, binary)


def test_fetch_from_rpkirepo_serve_and_our_rsync_daemon(root: Path) -> None:
    binary = require_peer("rpki-client")
    work = public_dir(root / "ours")
    tls = make_tls_ca(work / "tls", names=("localhost",))
    https_port, rsync_port = free_port(), free_port()
    with HostileServer(tls=tls_server_context(str(tls.server_cert), str(tls.server_key))) as ta:
        bed = _Bed(
            work / "origin",
            "localhost",
            https_port,
            rsync_port,
            f"https://localhost:{ta.port}/ta.cer",
        )
        ta.files["/ta.cer"] = (bed.testbed / "ta.cer").read_bytes()
        context = ssl.create_default_context(cafile=str(tls.ca_cert))

        def served(serial: int) -> None:
            deadline = time.monotonic() + 10
            url = f"https://localhost:{https_port}/healthz"
            while True:
                with urllib.request.urlopen(url, context=context, timeout=5) as reply:
                    if reply.read() == f"ok serial {serial}\n".encode():
                        return
                assert time.monotonic() < deadline, "rpkirepo serve did not switch in 10 s"
                time.sleep(0.1)

        with (
            rpkirepo_serve(work / "serve", bed.out / "rrdp", tls=tls, port=https_port, ipv6=False),
            rpkirepo_rsyncd({"repo": bed.out / "rsync"}, port=rsync_port) as rsyncd,
        ):

            def both_served(serial: int) -> None:
                served(serial)
                rsyncd.call(rsyncd.daemon.refresh)  # type: ignore[attr-defined]

            _check_walks(bed, public_dir(work / "caches"), tls.ca_cert, binary, both_served)
