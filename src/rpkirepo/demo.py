"""``make demo``: make a valid RPKI, publish it, change it, publish again, and show the output.

Everything is local and made on the spot: ``rpkirepo testbed`` generates a trust anchor, a small
CA tree with ROAs, ASPAs and Ghostbusters records, and the VRPs a relying party must find in it;
``rpkirepo publish`` turns it into an RRDP repository and an rsync tree under ``demo-out/``;
``rpkirepo sync`` mirrors that to a public node's directories and follows a change by one delta;
``rpkirepo serve`` serves the mirror on loopback and a second node syncs from it over HTTP; when
rpki-client is installed it validates the mirror over rsync through our rsync daemon.  Nothing
leaves the machine.  ``rpkirepo fetch`` then walks the mirror from the TAL through our rsync daemon
(the native rsync client) and rpki-client validates that cache offline.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rpkirepo.errors import RpkiRepoError
from rpkirepo.httpget import HttpOptions
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rrdp.parser import parse_notification
from rpkirepo.sync.mirror import SyncOptions, sync_once
from rpkirepo.sync.upstream import DirUpstream, HttpUpstream
from rpkirepo.testbed import TestbedOptions, advance, generate
from rpkirepo.uri import HttpsUri, RsyncUri

HTTPS_BASE = "https://localhost:3000/rrdp/"


def _show_tree(root: Path, limit: int) -> None:
    shown = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if shown < limit:
                st = p.stat()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st.st_mtime))
                print(f"    {p.relative_to(root)}  {st.st_size:>7} bytes  mtime {stamp}Z")
            shown += 1
    if shown > limit:
        print(f"    ... and {shown - limit} more")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _serve_and_fetch_back(out: Path, rrdp_dir: Path) -> dict[str, object]:
    """`rpkirepo serve` in a child process on a free loopback port; `sync` from it over HTTP."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rpkirepo", "-q", "serve", "--rrdp-dir", str(rrdp_dir),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"rpkirepo serve did not start: {err}") from None
                time.sleep(0.1)
        node2 = SyncOptions(
            notification_uri=HttpsUri(HTTPS_BASE + "notification.xml"),
            upstream=HttpUpstream(f"http://127.0.0.1:{port}/rrdp/", HttpOptions()),
            state_dir=out / "node2",
            rrdp_dir=out / "node2" / "rrdp",
            rsync_dir=out / "node2" / "rsync",
        )
        first = sync_once(node2)
        again = sync_once(node2)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {
        "url": f"http://127.0.0.1:{port}/rrdp/notification.xml",
        "outcome": first.outcome,
        "serial": first.serial,
        "objects": first.objects,
        "bytes": first.bytes_fetched,
        "again": again.outcome,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch_and_validate(
    out: Path, tal: Path, rsync_dir: Path, port: int, expected: Path
) -> list[str]:
    """Our rsync daemon (`rpkirepo serve --rsync-listen`) on the mirror; `rpkirepo fetch` walks
    it from the TAL with the native rsync client (twice: the second run transfers nothing); when
    rpki-client is installed it validates the fetch cache offline (-n) and the mirror over rsync
    (-R), and both must give the testbed's VRPs."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "rpkirepo", "-q", "serve", "--rsync-listen",
         f"127.0.0.1:{port}", "--module", f"repo={rsync_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    return ["the rsync daemon did not start: skipped"]
                time.sleep(0.1)
        lines = _fetch(out, tal, port)
        binary = shutil.which("rpki-client") or shutil.which("rpki-client", path="/usr/sbin")
        if binary is None:
            return [*lines, "rpki-client is not installed: skipped (make test runs it as root)"]
        lines.append(_rpki_client_offline(binary, out, tal, expected))
        return [*lines, _rpki_client(binary, out, tal, expected)]
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def _fetch(out: Path, tal: Path, port: int) -> list[str]:
    cache = out / "fetch"
    report = out / "fetch-report.json"
    argv = [sys.executable, "-m", "rpkirepo", "-q", "fetch", "--tal", str(tal), "--cache",
            str(cache), "--rsync-only", "--report", str(report)]  # fmt: skip
    lines = []
    for run in ("first", "second"):
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        took = time.monotonic() - started
        if done.returncode != 0 or not report.exists():
            return [f"rpkirepo fetch failed ({done.returncode}): {done.stderr.strip()[-300:]}"]
        doc = json.loads(report.read_text())
        [repo] = doc["repositories"]
        lines.append(
            f"rpkirepo fetch --tal --rsync-only ({run} run, native rsync client through our "
            f"daemon): {repo['objects']} objects, {repo['rsync_files_fetched']} files "
            f"transferred, {len(doc['publication_points'])} publication points matching their "
            f"manifests: {doc['summary']['inconsistent_publication_points'] == 0}, {took:.1f} s"
        )
    lines.append(f"clean tree: {cache / 'objects'}; report: {report}")
    return lines


def _rpki_client_offline(binary: str, out: Path, tal: Path, expected: Path) -> str:
    """rpki-client -n over the fetch cache (docs/fetch.md)."""
    outdir = out / "rpki-client-offline"
    outdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("_rpki-client")
        except KeyError:
            return "user _rpki-client missing: skipped"
        os.chown(outdir, pw.pw_uid, pw.pw_gid)
    argv = [binary, "-n", "-t", str(tal), "-d", str(out / "fetch" / "objects"), "-c",
            str(outdir)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    csv = outdir / "csv"
    if done.returncode != 0 or not csv.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"rpki-client -n could not run here ({last}): skipped"
    got = set(csv.read_text().splitlines()[1:])
    want = set(expected.read_text().splitlines()[1:])
    return (
        f"rpki-client -n (offline) over the fetch cache: {len(got)} VRPs, exactly the "
        f"testbed's expected VRPs: {got == want}"
    )


def _rpki_client(binary: str, out: Path, tal: Path, expected: Path) -> str:
    """rpki-client -R: the mirror over rsync through our rsync daemon."""
    work = out / "rpki-client"
    cache, outdir = work / "cache", work / "out"
    for d in (cache, outdir):
        d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # rpki-client drops privileges to _rpki-client
            try:
                pw = pwd.getpwnam("_rpki-client")
            except KeyError:
                return "user _rpki-client missing: skipped"
            os.chown(d, pw.pw_uid, pw.pw_gid)
    argv = [binary, "-R", "-t", str(tal), "-d", str(cache), "-s", "30", "-c", str(outdir)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    took = time.monotonic() - started
    csv = outdir / "csv"
    if done.returncode != 0 or not csv.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"rpki-client could not run here ({last}): skipped"
    got = set(csv.read_text().splitlines()[1:])
    want = set(expected.read_text().splitlines()[1:])
    return (
        f"rpki-client -R, from the mirror through rpkirepo's rsync daemon: {len(got)} VRPs "
        f"in {took:.1f} s, exactly the testbed's expected VRPs: {got == want}"
    )


def main() -> int:
    out = Path("demo-out").resolve()
    rsync_port = _free_port()
    RSYNC_BASE = f"rsync://localhost:{rsync_port}/repo/"  # noqa: N806 - the demo's one base
    shutil.rmtree(out, ignore_errors=True)
    try:
        started = time.monotonic()
        tb = generate(
            TestbedOptions(out_dir=out / "testbed", rsync_base=RSYNC_BASE, rrdp_base=HTTPS_BASE)
        )
        print(
            f"0. testbed: {len(tb.files)} objects in {time.monotonic() - started:.1f} s "
            f"(a TA, a CA tree, CRLs, manifests, ROAs, ASPAs, GBRs) in {tb.repository}\n"
            f"   a relying party must find {len(tb.vrps)} VRPs and {len(tb.aspas)} ASPAs "
            f"(listed in {tb.out_dir / 'expected-vrps.csv'}); TAL: {tb.tal}"
        )
        opts = PublishOptions(
            source_dir=tb.repository,
            rsync_base=RsyncUri(RSYNC_BASE),
            https_base=HttpsUri(HTTPS_BASE),
            state_dir=out / "state",
            rrdp_dir=out / "rrdp",
            rsync_dir=out / "rsync",
        )
        first = publish(opts)
        print(
            f"\n1. first publish: new session {first.session_id}, serial {first.serial}, "
            f"{first.objects} objects, snapshot {first.snapshot_size} bytes"
        )
        print(f"   RRDP  {opts.rrdp_dir}:")
        _show_tree(opts.rrdp_dir, limit=4)
        print(f"   rsync {opts.rsync_dir}/current -> {os.readlink(opts.rsync_dir / 'current')}")
        print("   (file mtimes follow RFC 9589: CMS signing-time, notBefore, thisUpdate)")
        _show_tree(opts.rsync_dir / "current", limit=5)

        victim = sorted(tb.repository.rglob("*.roa"))[0]
        victim_bytes = victim.read_bytes()
        victim.unlink()
        second = publish(opts)
        print(
            f"\n2. withdrew {victim.relative_to(tb.repository)}: serial {second.serial}, "
            f"-{second.removed} object(s), one delta, a new snapshot and notification"
        )
        note = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
        print(f"   notification: serial {note.serial}, snapshot {note.snapshot.uri}")
        for d in note.deltas:
            print(f"   delta {d.serial}: {d.uri}")

        third = publish(opts)
        print(f"\n3. nothing changed: serial stays {third.serial}, nothing written")

        mirror = SyncOptions(
            notification_uri=HttpsUri(HTTPS_BASE + "notification.xml"),
            upstream=DirUpstream(opts.rrdp_dir),
            state_dir=out / "mirror",
            rrdp_dir=out / "mirror" / "rrdp",
            rsync_dir=out / "mirror" / "rsync",
        )
        synced = sync_once(mirror)
        print(
            f"\n4. a public node mirrors it (rpkirepo sync, reading {opts.rrdp_dir}): "
            f"{synced.outcome} ({synced.reason}), serial {synced.serial}, {synced.objects} objects"
        )
        victim.write_bytes(victim_bytes)  # back, so that the testbed can advance
        advance(tb.out_dir)
        fourth = publish(opts)
        synced = sync_once(mirror)
        same = _files(mirror.rsync_dir / "current") == _files(opts.rsync_dir / "current")
        print(
            f"5. the ROA back, testbed advance (new manifests and CRLs, a ROA revoked and one "
            f"added) -> publish "
            f"serial {fourth.serial} -> sync: {synced.outcome}, {synced.deltas_applied} delta "
            f"applied (+{synced.added} ~{synced.modified} -{synced.removed}) in "
            f"{sum(synced.timings.values()):.2f} s; mirror tree identical to the publisher's: "
            f"{same}"
        )
        print(f"   mirror RRDP {mirror.rrdp_dir}, rsync {mirror.rsync_dir}/current")

        served = _serve_and_fetch_back(out, mirror.rrdp_dir)
        print(
            f"\n6. rpkirepo serve on {served['url']} (the mirror's RRDP directory, plain HTTP on "
            f"loopback), and a second node syncing from it over HTTP: {served['outcome']}, "
            f"serial {served['serial']}, {served['objects']} objects, {served['bytes']} bytes "
            f"fetched; then {served['again']} (one conditional request). Its tree is identical: "
            f"{_files(out / 'node2' / 'rsync' / 'current') == _files(opts.rsync_dir / 'current')}"
        )
        lines = _fetch_and_validate(
            out, tb.tal, mirror.rsync_dir, rsync_port, tb.out_dir / "expected-vrps.csv"
        )
        print("\n7. " + "\n   ".join(lines))
        print(
            "\nServe it for real: rpkirepo serve --rrdp-dir demo-out/rrdp --listen ADDR:443 "
            "--tls-cert ... --tls-key ...\n(or nginx with gzip_static, docs/serving.md) and an "
            "rsync module 'repo' on demo-out/rsync/current;\nthen point a relying party at "
            f"{tb.tal}. `make test` does exactly that with rpki-client, FORT and OctoRPKI.\n"
            "Your own repository: rpkirepo publish DIR --rsync-base ... --https-base ...; "
            "a public node: rpkirepo sync (docs/sync.md)."
        )
    except RpkiRepoError as exc:
        print(f"demo: error {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
