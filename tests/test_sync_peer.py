"""End to end through a mirror: rpki-client validates what `rpkirepo sync` serves.

testbed → `rpkirepo publish` into a hidden directory (the publication server) → `rpkirepo sync`
(the CLI, reading the hidden directory) → the mirror's RRDP directory behind the real nginx (TLS)
and its ``current`` tree behind the real rsync daemon → rpki-client over RRDP and over rsync only
outputs exactly the testbed's VRPs.  Then `testbed advance` → publish → sync (applying the
delta) → rpki-client on the same cache takes the delta path and outputs the new VRPs, and the
rsync daemon sends only the files that changed.  FORT and OctoRPKI (over RRDP) follow the same
steps on caches of their own and output exactly the VRPs of each step.  The second test puts our
own servers in front of the mirror (`rpkirepo serve` over TLS, the rpkirepo rsync daemon) and runs
rpki-client, FORT and OctoRPKI through them the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from peers import (
    free_port,
    make_tls_ca,
    peer_scratch,
    public_dir,
    rpkirepo_rsyncd,
    rpkirepo_serve,
    run_fort,
    run_octorpki,
    run_rpki_client,
    run_rpkirepo,
    serve_repository,
    unexpected_lines,
)
from test_rps_peer import OCTORPKI_UNKNOWN_TYPE, fort_complaints, octorpki_log, want_vrps

pytestmark = pytest.mark.peer

EXPECTED_STDERR = [
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: downloading \d+ deltas?",
    r"rpki-client: \S+: (repository|notification file) not modified",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: all files parsed: generating output",
]


@pytest.fixture
def root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-sync-", "rpki-client") as path:
        yield path


def _rows(testbed: Path) -> set[str]:
    return set((testbed / "expected-vrps.csv").read_text().splitlines()[1:])


def _files(tree: Path) -> dict[str, bytes]:
    return {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def test_rpki_client_validates_through_the_mirror(root: Path) -> None:
    for peer in ("nginx", "rsync", "rpki-client", "fort", "octorpki", "unshare", "setpriv"):
        require_peer(peer)
    https_port, rsync_port = free_port(), free_port()
    rsync_base = f"rsync://localhost:{rsync_port}/repo/"
    rrdp_base = f"https://localhost:{https_port}/rrdp/"
    notify = rrdp_base + "notification.xml"
    testbed = root / "testbed"
    run_rpkirepo(
        "testbed", str(testbed), "--cas", "3", "--depth", "2", "--roas-per-ca", "3",
        "--seed", "5", "--rsync-base", rsync_base, "--rrdp-base", rrdp_base,
        "--ta-uri", f"https://localhost:{https_port}/ta/ta.cer", "--ta-uri", rsync_base + "ta.cer",
    )  # fmt: skip
    hidden = root / "hidden"
    mirror = public_dir(root / "mirror")

    def publish_and_sync() -> dict[str, object]:
        run_rpkirepo(
            "publish", str(testbed / "repository"),
            "--rsync-base", rsync_base, "--https-base", rrdp_base,
            "--state-dir", str(hidden / "state"), "--rrdp-dir", str(hidden / "rrdp"),
            "--rsync-dir", str(hidden / "rsync"),
        )  # fmt: skip
        out = run_rpkirepo(
            "sync", notify, "--source-uri-base", str(hidden / "rrdp"),
            "--state-dir", str(mirror), "--json",
        )  # fmt: skip
        summary = json.loads(out.stdout)
        assert isinstance(summary, dict)
        return summary

    first = publish_and_sync()
    assert first["outcome"] == "snapshot"
    with serve_repository(
        root, mirror / "rrdp", mirror / "rsync", testbed / "ta.cer", https_port, rsync_port
    ) as served:
        nginx, rsyncd, tls = served.nginx, served.rsync, served.tls

        def validate(fetch: str | None) -> list[str]:
            mark, rsync_mark = nginx.mark(), rsyncd.mark()
            result = run_rpki_client(
                root / f"rpki-client-{'rrdp' if fetch else 'rsync'}",
                testbed / "ta.tal",
                binary=require_peer("rpki-client"),
                trust=tls.ca_cert,
                hosts={"localhost": "127.0.0.1"},
                rsync_only=fetch is None,
            )
            ctx = f"{result.describe()}\n{nginx.logs()}\n{rsyncd.log_text(rsync_mark)}"
            assert result.returncode == 0, ctx
            if fetch is not None:
                assert f"rpki-client: {notify}: {fetch}" in result.stderr, ctx
            else:
                assert nginx.access_entries(mark) == [], ctx
            warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
            assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n" + ctx
            meta = result.metadata()
            for key in ("invalidcertificates", "failedmanifests", "stalemanifests", "failedroas"):
                assert meta.get(key) == 0, (key, ctx)
            got = set((result.outdir / "csv").read_text().splitlines()[1:])
            want = _rows(testbed)
            assert got == want, f"missing {want - got}\nunexpected {got - want}\n{ctx}"
            return rsyncd.sent_files("repo", rsync_mark)

        def note_text() -> str:
            return (mirror / "rrdp" / "notification.xml").read_text()

        def other_rps() -> None:
            """FORT and OctoRPKI over RRDP from the mirror, each on its own cache kept across
            steps: exactly the expected VRPs, no complaint."""
            hosts = {"localhost": "127.0.0.1"}
            for name in ("fort", "octorpki"):
                mark = nginx.mark()
                runner = run_fort if name == "fort" else run_octorpki
                result = runner(
                    root / name,
                    testbed / "ta.tal",
                    binary=require_peer(name),
                    trust=tls.ca_cert,
                    hosts=hosts,
                )
                ctx = f"{result.describe()}\n{nginx.logs()}"
                assert result.returncode == 0, ctx
                if name == "fort":
                    complaints = fort_complaints(result)
                else:
                    complaints = [
                        f"{lvl}: {msg}"
                        for lvl, msg in octorpki_log(result)
                        if lvl != "info" and msg != OCTORPKI_UNKNOWN_TYPE
                    ]
                assert complaints == [], f"{name} complained: {complaints}\n{ctx}"
                # FORT 1.5.4 standalone keeps no RRDP state between runs (the snapshot each
                # time); OctoRPKI 1.4.4 sometimes follows the delta: either way, it read files
                # our notification names, and output exactly the new VRPs.
                fetched = {str(e["uri"]) for e in nginx.access_entries(mark)}
                named = re.findall(r'uri="https://[^/"]+(/[^"]+)"', note_text())
                assert fetched & set(named), (name, fetched, named, ctx)
                got, want = result.vrps(), want_vrps(testbed)
                assert got == want, f"{name}: missing {want - got}, unexpected {got - want}"

        validate("downloading snapshot")
        validate(None)
        other_rps()
        for roll in ([], ["--roll-key"]):
            before_rows = _rows(testbed)
            before = _files(testbed / "repository")
            run_rpkirepo("testbed", "advance", str(testbed), *roll)
            assert _rows(testbed) != before_rows
            after = _files(testbed / "repository")
            changed = {rel for rel in after if before.get(rel) != after[rel]}
            summary = publish_and_sync()
            assert (summary["outcome"], summary["deltas_applied"]) == ("deltas", 1), summary
            validate("downloading 1 deltas")
            sent = validate(None)
            assert changed and set(sent) - {"ta.cer"} <= changed, (sent, changed)
            other_rps()


def test_relying_parties_through_our_own_servers(root: Path) -> None:
    """The same chain with our servers in front of the mirror: `rpkirepo serve` (TLS) for RRDP
    and the rpkirepo rsync daemon for rsync.  The TAL names the TA certificate by its rsync URI
    only (`rpkirepo serve` serves RRDP files, not a TA certificate).  rpki-client (RRDP, then
    rsync only), FORT (RRDP and rsync only) and OctoRPKI (RRDP) output exactly the VRPs, before
    and after an advance; rpki-client follows it by one delta."""
    for peer in ("rsync", "rpki-client", "fort", "octorpki", "unshare", "setpriv"):
        require_peer(peer)
    https_port, rsync_port = free_port(), free_port()
    rsync_base = f"rsync://localhost:{rsync_port}/repo/"
    rrdp_base = f"https://localhost:{https_port}/rrdp/"
    notify = rrdp_base + "notification.xml"
    testbed = root / "testbed"
    run_rpkirepo(
        "testbed", str(testbed), "--cas", "3", "--depth", "2", "--roas-per-ca", "2",
        "--seed", "9", "--rsync-base", rsync_base, "--rrdp-base", rrdp_base,
        "--ta-uri", rsync_base + "ta.cer",
    )  # fmt: skip
    hidden, mirror = root / "hidden", public_dir(root / "mirror")

    def publish_and_sync() -> None:
        run_rpkirepo(
            "publish", str(testbed / "repository"),
            "--rsync-base", rsync_base, "--https-base", rrdp_base,
            "--state-dir", str(hidden / "state"), "--rrdp-dir", str(hidden / "rrdp"),
            "--rsync-dir", str(hidden / "rsync"),
        )  # fmt: skip
        run_rpkirepo(
            "sync", notify, "--source-uri-base", str(hidden / "rrdp"), "--state-dir", str(mirror)
        )

    publish_and_sync()
    tls = make_tls_ca(root / "tls", names=("localhost",))
    hosts = {"localhost": "127.0.0.1"}
    with (
        rpkirepo_serve(root / "serve", mirror / "rrdp", tls=tls, port=https_port, ipv6=False),
        rpkirepo_rsyncd({"repo": mirror / "rsync"}, port=rsync_port),
    ):

        def check(step: int) -> None:
            for rsync_only in (False, True):
                mode = "rsync" if rsync_only else "rrdp"
                result = run_rpki_client(
                    root / f"ours-rpki-client-{mode}",
                    testbed / "ta.tal",
                    binary=require_peer("rpki-client"),
                    trust=tls.ca_cert,
                    hosts=hosts,
                    rsync_only=rsync_only,
                )
                assert result.returncode == 0, result.describe()
                warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
                assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings)
                if not rsync_only:
                    fetch = "downloading snapshot" if step == 0 else "downloading 1 deltas"
                    assert f"rpki-client: {notify}: {fetch}" in result.stderr, result.describe()
                got = set((result.outdir / "csv").read_text().splitlines()[1:])
                assert got == _rows(testbed), result.describe()
            for name, rsync_only in (("fort", False), ("fort", True), ("octorpki", False)):
                runner = run_fort if name == "fort" else run_octorpki
                result = runner(
                    root / f"ours-{name}-{'rsync' if rsync_only else 'rrdp'}",
                    testbed / "ta.tal",
                    binary=require_peer(name),
                    trust=tls.ca_cert,
                    hosts=hosts,
                    rsync_only=rsync_only,
                )
                assert result.returncode == 0, result.describe()
                if name == "fort":
                    complaints = fort_complaints(result)
                else:
                    complaints = [
                        f"{lvl}: {msg}"
                        for lvl, msg in octorpki_log(result)
                        if lvl != "info" and msg != OCTORPKI_UNKNOWN_TYPE
                    ]
                assert complaints == [], f"{name} complained: {complaints}\n{result.describe()}"
                got_vrps, want = result.vrps(), want_vrps(testbed)
                assert got_vrps == want, f"{name}: {want - got_vrps} / {got_vrps - want}"

        check(0)
        run_rpkirepo("testbed", "advance", str(testbed))
        publish_and_sync()
        # Both servers pick the new revision up by polling (serve: the notification, every
        # 0.2 s here; the rsync daemon: `current`, every rsync_revision_poll seconds).
        want = {
            p.relative_to(testbed / "repository").as_posix()
            for p in (testbed / "repository").rglob("*")
            if p.is_file()
        }
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listing = subprocess.run(
                [
                    require_peer("rsync"),
                    "-r",
                    "--list-only",
                    f"rsync://127.0.0.1:{rsync_port}/repo/",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            served = {line.split()[-1] for line in listing.splitlines() if line.startswith("-")}
            if served == want:
                break
            time.sleep(0.3)
        assert served == want, "the rsync daemon did not switch to the new revision"
        check(1)
