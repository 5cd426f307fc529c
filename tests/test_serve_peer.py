"""`rpkirepo serve` with real peers: rpki-client validates a published testbed fetched through it
over TLS (snapshot, then a delta), and the two nginx configurations of docs/serving.md (static
files; caching proxy in front of `rpkirepo serve`) are run with the real nginx and checked.

The nginx configurations are taken verbatim from docs/serving.md (the fenced blocks marked
``# serving.md: static`` and ``# serving.md: proxy``); only the placeholders (paths, ports, TLS
files) are replaced, so the documentation cannot drift from what is tested.  Trust and names for
rpki-client as in test_testbed_peer.py (a throwaway CA and /etc/hosts by bind mounts in a private
mount namespace).  Servers run as nobody, hence the world-traversable scratch directory.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_peer
from peers import (
    TlsCa,
    free_port,
    https_get,
    make_readable,
    make_tls_ca,
    nginx_custom,
    nginx_tls,
    peer_scratch,
    public_dir,
    rpkirepo_serve,
    run_rpki_client,
    run_rpkirepo,
    unexpected_lines,
)
from test_serve_core import make_rrdp_dir

pytestmark = pytest.mark.peer

RSYNC_BASE = "rsync://localhost/repo/"


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-serve-", "nginx/rpki-client") as path:
        yield path


@pytest.fixture(scope="module")
def tls(root: Path) -> TlsCa:
    return make_tls_ca(root / "tls", names=("localhost",))


def doc_block(marker: str) -> str:
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if b.startswith(f"# serving.md: {marker}\n")]
    return str(block)


def fill(block: str, tls: TlsCa, port: int, rrdp: Path, **more: str) -> str:
    out = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    out = out.replace("    listen [::]:443 ssl;\n", "")
    out = out.replace("/etc/ssl/rrdp/fullchain.pem", str(tls.server_cert))
    out = out.replace("/etc/ssl/rrdp/privkey.pem", str(tls.server_key))
    out = out.replace("/var/lib/rpkirepo/rrdp", str(rrdp))
    for old, new in more.items():
        assert old.replace("_", " ") in out or old in out, old
        out = out.replace(old, new)
    assert " 443 " not in out and ":443 " not in out and "/etc/ssl" not in out, out
    assert "/var/" not in out, out
    return out


def get(tls: TlsCa, port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return https_get(tls, port, path, {k.replace("_", "-"): v for k, v in headers.items()})


# --------------------------------------------------------------------------------------------
# docs/serving.md, configuration 2: nginx on the files


def test_nginx_static_config_from_the_docs(root: Path, tls: TlsCa) -> None:
    nginx = require_peer("nginx")
    work = public_dir(root / "static")
    repo = make_rrdp_dir(work / "rrdp", 4, snapshot_size=200_000, deltas=2)
    (repo.root / ".tmp-notification.xml.1234").write_bytes(b"half written")
    make_readable(repo.root)
    port = free_port()
    conf = fill(doc_block("static"), tls, port, repo.root)
    with nginx_custom(work / "nginx", conf, port=port, binary=nginx) as server:
        status, h, body = get(tls, port, "/rrdp/notification.xml")
        ctx = server.logs()
        assert status == 200 and body == repo.notification, ctx
        assert h["cache-control"] == "public, max-age=60", h
        assert h["content-type"] == "application/xml"
        status, h, body = get(tls, port, "/rrdp/notification.xml", accept_encoding="gzip")
        assert h.get("content-encoding") == "gzip" and gzip.decompress(body) == repo.notification
        assert h.get("vary") == "Accept-Encoding"
        snap = repo.files[repo.snapshot_url]
        status, h, body = get(tls, port, repo.snapshot_url)
        assert (status, body) == (200, snap)
        assert h["cache-control"] == "public, max-age=86400, immutable"
        status, h, body = get(tls, port, repo.snapshot_url, range="bytes=10-19")
        assert (status, body) == (206, snap[10:20])
        for delta in repo.delta_urls():
            status, h, body = get(tls, port, delta, accept_encoding="gzip")
            assert status == 200 and gzip.decompress(body) == repo.files[delta]
        status, h, _ = get(
            tls, port, "/rrdp/notification.xml", if_modified_since=h["last-modified"]
        )
        assert status in (200, 304)
        status, _, _ = get(tls, port, "/rrdp/notification.xml", if_none_match=h.get("etag", "x"))
        assert status in (200, 304)
        for path in ("/rrdp/.tmp-notification.xml.1234", "/etc/passwd", "/state/publish.db",
                     "/rrdp/%2e%2e/%2e%2e/etc/passwd"):  # fmt: skip
            status, _, body = get(tls, port, path)
            assert status in (400, 404), (path, status)
            assert b"half written" not in body and b"root:" not in body
        status, _, _ = get(tls, port, "/rrdp/")
        assert status in (403, 404)  # no listing


# --------------------------------------------------------------------------------------------
# docs/serving.md, configuration 3: nginx caching in front of `rpkirepo serve`


def _until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.3)
    return False


def test_nginx_caching_proxy_config_from_the_docs(root: Path, tls: TlsCa) -> None:
    nginx = require_peer("nginx")
    work = public_dir(root / "proxy")
    repo = make_rrdp_dir(work / "rrdp", 7, snapshot_size=200_000, deltas=2)
    make_readable(repo.root)
    cache = public_dir(work / "cache")
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    with rpkirepo_serve(work / "origin", repo.root, ipv6=False) as origin:
        conf = fill(
            doc_block("proxy"), tls, port, repo.root,
            **{
                "127.0.0.1:8080": f"127.0.0.1:{origin.port}",
                "/var/cache/nginx/rrdp": str(cache),
                "proxy_cache_valid 200 5s;": "proxy_cache_valid 200 1s;",
            },
        )  # fmt: skip
        with nginx_custom(work / "nginx", conf, port=port, binary=nginx) as server:

            def ctx() -> str:
                return server.logs() + "\n" + origin.logs()

            status, h, body = get(tls, port, "/rrdp/notification.xml")
            assert (status, body) == (200, repo.notification), ctx()
            assert h["x-cache-status"] == "MISS"
            assert h["cache-control"] == "public, max-age=60"  # what RPs see is the origin's
            status, h, body = get(tls, port, "/rrdp/notification.xml")
            assert (status, h["x-cache-status"], body) == (200, "HIT", repo.notification), ctx()
            snap = repo.files[repo.snapshot_url]
            for want in ("MISS", "HIT"):
                status, h, body = get(tls, port, repo.snapshot_url, accept_encoding="gzip")
                assert status == 200 and gzip.decompress(body) == snap, ctx()
                assert h["x-cache-status"] == want and h["content-encoding"] == "gzip"
                assert h["cache-control"] == "public, max-age=86400, immutable"
            status, h, body = get(tls, port, repo.snapshot_url)  # the identity variant (Vary)
            assert status == 200 and body == snap and "content-encoding" not in h
            status, h, body = get(tls, port, repo.snapshot_url, if_none_match=h["etag"])
            assert status == 304
            status, h, body = get(tls, port, "/rrdp/nothing.xml")
            assert status == 404
            # a new serial reaches RPs through the cache within seconds (5 s in the docs, 1 s here)
            new = make_rrdp_dir(repo.root, 8, snapshot_size=200_000, deltas=2)
            make_readable(repo.root)
            assert _until(
                lambda: get(tls, port, "/rrdp/notification.xml")[2] == new.notification, 8
            ), ctx()
            status, h, body = get(tls, port, new.snapshot_url)
            assert (status, body) == (200, new.files[new.snapshot_url])

            # once the cached notification expires, nginx re-validates it: a 304 from the origin
            def revalidated() -> bool:
                assert get(tls, port, "/rrdp/notification.xml")[2] == new.notification
                return any(" 304 " in x for x in origin.access_lines())

            assert _until(revalidated, 6), ctx()
            origin_lines = len(origin.access_lines())
        # ... the origin goes away (the nginx block is re-entered below with the same cache)
    assert origin_lines > 0
    with nginx_custom(work / "nginx2", conf, port=port, binary=nginx) as server:
        seen: list[str] = []

        def stale() -> bool:  # once the cached notification expires (valid 1 s) ...
            status, h, body = get(tls, port, "/rrdp/notification.xml")
            assert status == 200 and body == new.notification, server.logs()
            seen.append(h["x-cache-status"])
            return h["x-cache-status"] in ("STALE", "UPDATING")

        assert _until(stale, 5), seen  # ... it is still served, stale, with the origin down
        status, h, body = get(tls, port, new.snapshot_url)
        assert (status, h["x-cache-status"], body) == (200, "HIT", new.files[new.snapshot_url])
        status, h, _ = get(tls, port, new.delta_urls()[0])  # never cached, origin down
        assert status == 502


# --------------------------------------------------------------------------------------------
# rpki-client validating a testbed fetched through `rpkirepo serve`


EXPECTED_STDERR = [
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: downloading \d+ deltas",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: \S+: loaded from cache",
    r"rpki-client: all files parsed: generating output",
]


def _want_vrps(testbed: Path) -> set[tuple[int, str, int]]:
    doc = json.loads((testbed / "expected-vrps.json").read_text())
    return {
        (int(r["asn"]), str(ipaddress.ip_network(r["prefix"])), int(r["maxLength"]))
        for r in doc["roas"]
    }


def test_rpki_client_validates_a_testbed_through_rpkirepo_serve(root: Path, tls: TlsCa) -> None:
    binary = require_peer("rpki-client")
    for peer in ("nginx", "unshare"):
        require_peer(peer)
    work = public_dir(root / "rp")
    port, ta_port = free_port(), free_port()
    rrdp_base = f"https://localhost:{port}/rrdp/"
    ta_uri = f"https://localhost:{ta_port}/ta/ta.cer"
    testbed = work / "testbed"
    run_rpkirepo(
        "testbed", str(testbed), "--cas", "3", "--depth", "2", "--roas-per-ca", "3",
        "--seed", "5", "--rsync-base", RSYNC_BASE, "--rrdp-base", rrdp_base, "--ta-uri", ta_uri,
    )  # fmt: skip
    out = public_dir(work / "publish")

    def publish() -> None:
        run_rpkirepo(
            "publish", str(testbed / "repository"), "--rsync-base", RSYNC_BASE,
            "--https-base", rrdp_base, "--state-dir", str(out / "state"),
            "--rrdp-dir", str(out / "rrdp"), "--rsync-dir", str(out / "rsync"),
        )  # fmt: skip
        make_readable(out / "rrdp")

    publish()
    with (
        nginx_tls(work / "nginx", tls, {"/ta/ta.cer": testbed / "ta.cer"}, port=ta_port,
                  binary=shutil.which("nginx") or "/usr/sbin/nginx"),
        rpkirepo_serve(work / "serve", out / "rrdp", tls=tls, port=port) as server,
    ):  # fmt: skip
        for step in ("snapshot", "delta"):
            if step == "delta":
                run_rpkirepo("testbed", "advance", str(testbed))
                publish()
                serial = re.search(
                    r'serial="(\d+)"', (out / "rrdp" / "notification.xml").read_text()
                )
                assert serial is not None
                want = f"ok serial {serial.group(1)}\n".encode()

                def at_serial(want: bytes = want) -> bool:
                    return get(tls, port, "/healthz")[2] == want

                assert _until(at_serial, 5)
            mark = len(server.access_lines())
            result = run_rpki_client(
                work / "rpki-client", testbed / "ta.tal", binary=binary, trust=tls.ca_cert,
                hosts={"localhost": "127.0.0.1"}, shortlist=("localhost",),
            )  # fmt: skip
            ctx = f"{result.describe()}\n{server.logs()}"
            assert result.returncode == 0, ctx
            warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
            assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n" + ctx
            assert result.vrps() == _want_vrps(testbed), ctx
            meta = result.metadata()
            assert meta.get("failedmanifests") == 0 and meta.get("invalidroas", 0) == 0, ctx

            def logged(m: int = mark) -> bool:
                return len(server.access_lines()) - m >= 2

            assert _until(logged, 5), ctx
            lines = server.access_lines()[mark:]
            served = [re.search(r'"GET (\S+) HTTP/1\.1" (\d+)', line) for line in lines]
            got = {(m.group(1).rsplit("/", 1)[-1], m.group(2)) for m in served if m}
            got.discard(("healthz", "200"))  # this test's own polling
            if step == "snapshot":
                assert got == {("notification.xml", "200"), ("snapshot.xml", "200")}, ctx
            else:
                assert got == {("notification.xml", "200"), ("delta.xml", "200")}, ctx
