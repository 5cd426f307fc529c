"""The real rpki-client accepts what `rpkirepo testbed` generates.

* ``rpki-client -f`` (object inspection) on every generated file, with the testbed laid out as
  rpki-client's cache (``cache/localhost/repo/...``, the TA at ``cache/ta/ta/ta.cer``) so that it
  can build each object's chain: every certificate and signed object must say ``Validation: OK``
  and nothing may be printed on stderr.  (rpki-client 8.2 exits 0 even when it cannot parse a
  file, so the output is what is checked.)
* End to end: the testbed is published with the real CLI (`python -m rpkirepo publish`), served
  by the real nginx (RRDP and the TA certificate, https://localhost:3000/) and the real rsync
  daemon (rsync://localhost/repo/), and rpki-client validates it over RRDP and over rsync only
  (-R) with the real clock: no warning, nothing failed, and exactly the VRPs (CSV and JSON) and
  ASPAs of expected-vrps.*.

The generated objects are valid from an hour ago, so no clock faking is needed.  See
docs/testing.md for the TLS trust and name arrangement and docs/testbed.md for the generator.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from peers import (
    RpkiClientResult,
    Served,
    peer_scratch,
    run_rpki_client,
    run_rpkirepo,
    serve_testbed,
    unexpected_lines,
)

pytestmark = pytest.mark.peer

RSYNC_BASE = "rsync://localhost/repo/"
RRDP_BASE = "https://localhost:3000/rrdp/"
TA_HTTPS = "https://localhost:3000/ta/ta.cer"
TA_RSYNC = RSYNC_BASE + "ta.cer"
HTTPS_PORT = 3000
RSYNC_PORT = 873
NOTIFY_URI = RRDP_BASE + "notification.xml"

# Every line rpki-client 8.x prints on stderr with -v when all goes well (as in
# test_peer_rpki_client.py); anything else fails the test and is quoted.
EXPECTED_STDERR = [
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: all files parsed: generating output",
]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-testbed-", "rpki-client") as path:
        yield path


@pytest.fixture(scope="module")
def testbed(root: Path) -> Path:
    """`rpkirepo testbed` with the names and ports the harness fixes; 3 CAs, depth 2."""
    out = root / "testbed"
    run_rpkirepo(
        "testbed", str(out), "--cas", "3", "--depth", "2", "--roas-per-ca", "3",
        "--seed", "11", "--rsync-base", RSYNC_BASE, "--rrdp-base", RRDP_BASE,
        "--ta-uri", TA_HTTPS, "--ta-uri", TA_RSYNC,
    )  # fmt: skip
    return out


def objects(testbed: Path) -> list[str]:
    repo = testbed / "repository"
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())


def test_rpki_client_inspects_every_object(testbed: Path, root: Path) -> None:
    binary = require_peer("rpki-client")
    work = root / "inspect"
    cache = work / "cache"
    shutil.copytree(testbed / "repository", cache / "localhost" / "repo")
    (cache / "ta" / "ta").mkdir(parents=True)
    shutil.copyfile(testbed / "ta.cer", cache / "ta" / "ta" / "ta.cer")
    seen: dict[str, int] = {}
    for rel in objects(testbed):
        argv = [binary, "-d", str(cache), "-t", str(testbed / "ta.tal"), "-f"]
        argv.append(str(cache / "localhost" / "repo" / rel))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        ctx = f"{' '.join(argv)}\nexit {proc.returncode}\n{proc.stderr}\n{proc.stdout}"
        assert proc.returncode == 0, ctx
        assert proc.stderr == "", ctx
        validation = re.findall(r"^Validation: *(.*)$", proc.stdout, re.M)
        # rpki-client 8.2 validates certificates and signed objects, not CRLs on their own.
        assert validation == ([""] if rel.endswith(".crl") else ["OK"]), ctx
        ext = rel.rsplit(".", 1)[1]
        seen[ext] = seen.get(ext, 0) + 1
        marker = {
            "roa": "asID:",
            "mft": "Manifest Number:",
            "asa": "Customer AS:",
            "gbr": "vcard:",
            "crl": "CRL valid until:",
            "cer": "Subordinate resources:",
        }[ext]
        assert marker in proc.stdout, ctx
    assert seen == {"cer": 4, "crl": 4, "mft": 4, "roa": 9, "asa": 3, "gbr": 3}


@pytest.fixture(scope="module")
def served(testbed: Path, root: Path) -> Iterator[Served]:
    for peer in ("nginx", "rsync", "rpki-client", "unshare"):
        require_peer(peer)
    with serve_testbed(
        root, testbed, rsync_base=RSYNC_BASE, rrdp_base=RRDP_BASE,
        https_port=HTTPS_PORT, rsync_port=RSYNC_PORT,
    ) as served:  # fmt: skip
        yield served


def expected(testbed: Path) -> dict[str, list[dict[str, object]]]:
    doc = json.loads((testbed / "expected-vrps.json").read_text())
    assert isinstance(doc, dict)
    return doc


def rpki_client_aspas(result: RpkiClientResult) -> dict[str, list[dict[str, object]]]:
    """rpki-client 8.2's JSON ASPAs: ``provider_authorizations`` maps "ipv4" and "ipv6" to a
    list of ``{customer_asid, providers, expires}`` (a provider without afiLimit is listed in
    both families)."""
    auth = result.output_json().get("provider_authorizations", {})
    assert isinstance(auth, dict)
    return auth


@pytest.mark.parametrize("rsync_only", [False, True], ids=["rrdp", "rsync"])
def test_rpki_client_validates_the_testbed(
    served: Served, testbed: Path, root: Path, rsync_only: bool
) -> None:
    mode = "rsync" if rsync_only else "rrdp"
    nginx_mark, rsync_mark = served.nginx.mark(), served.rsync.mark()
    result = run_rpki_client(
        root / f"rpki-client-{mode}",
        testbed / "ta.tal",
        binary=require_peer("rpki-client"),
        trust=served.tls.ca_cert,
        hosts={"localhost": "127.0.0.1"},
        rsync_only=rsync_only,
        shortlist=("localhost",),
    )
    ctx = (
        f"{result.describe()}\n{served.nginx.logs()}\n--- rsyncd ---\n"
        f"{served.rsync.log_text(rsync_mark)}"
    )
    assert result.returncode == 0, ctx
    warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
    assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n\n" + ctx

    if rsync_only:
        assert f"rpki-client: ta/ta: pulling from {TA_RSYNC}" in result.stderr, ctx
        assert served.nginx.access_entries(nginx_mark) == [], ctx
    else:
        assert f"rpki-client: ta/ta: pulling from {TA_HTTPS}" in result.stderr, ctx
        assert f"rpki-client: {NOTIFY_URI}: downloading snapshot" in result.stderr, ctx
        assert served.rsync.module_requests("repo", rsync_mark) == [], ctx

    meta = result.metadata()
    want_meta = {
        "tals": 1, "invalidtals": 0, "certificates": 4, "invalidcertificates": 0,
        "manifests": 4, "failedmanifests": 0, "stalemanifests": 0, "crls": 4,
        "roas": 9, "failedroas": 0, "invalidroas": 0,
        "aspas": 3, "invalidaspas": 0, "gbrs": 3,
    }  # fmt: skip
    assert {k: meta.get(k) for k in want_meta} == want_meta, ctx

    doc = expected(testbed)
    want_vrps = {(int(r["asn"]), str(r["prefix"]), int(r["maxLength"])) for r in doc["roas"]}  # type: ignore[call-overload]
    assert result.vrps() == want_vrps, (
        f"missing: {sorted(want_vrps - result.vrps())}\n"
        f"unexpected: {sorted(result.vrps() - want_vrps)}\n{ctx}"
    )
    assert result.csv_vrps() == want_vrps, ctx
    # The whole CSV, trust anchor name and expiry included, is what the testbed predicted.
    got_csv = (result.outdir / "csv").read_text().splitlines()
    want_csv = (testbed / "expected-vrps.csv").read_text().splitlines()
    assert got_csv[0] == want_csv[0] and set(got_csv[1:]) == set(want_csv[1:]), ctx

    # ASPAs, expiry included: the testbed writes no afiLimit, so each family lists them all.
    def by_customer(entries: list[dict[str, object]]) -> list[dict[str, object]]:
        return sorted(entries, key=lambda e: str(e["customer_asid"]))

    got = rpki_client_aspas(result)
    assert set(got) == {"ipv4", "ipv6"}, ctx
    for family in ("ipv4", "ipv6"):
        assert by_customer(got[family]) == by_customer(doc["aspas"]), (family, ctx)
