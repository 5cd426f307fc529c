"""Several publication points: `rpkirepo testbed --pub-point`, read back, advanced, served.

A testbed of 6 CAs over 2 levels with two extra publication points, one on another host with
RRDP (``rpki-a.localhost:8873``, module ``a``) and one rsync-only on the main host but another
module (``localhost``, module ``other``), is generated once per module and read back with
rpkirepo's own object reader (:func:`rpkirepo.objects.read_object`): each point's directory
holds exactly the CAs the round-robin puts there; every CA certificate carries the SIA of its own
point (caRepository, rpkiManifest, rpkiNotify only where the point has RRDP) and lies in its
parent's point; every EE certificate names its own file, and every AIA, CRLDP and rpkiManifest
URI names a file at that URI's place in the layout (mapped here independently of the
generator); manifests list exactly their directory; the ROAs on disk give exactly the expected
VRPs.  Then `testbed advance`, key rolls included, across the points; option errors; old
state files without the points; the CLI.

The peer test at the end publishes each point with `rpkirepo publish`, serves them with one
nginx (one TLS server per host name) and one rsync daemon (one module per point), and runs the
real rpki-client over RRDP and over rsync only, with all three host names mapped to 127.0.0.1:
exactly the expected VRPs and ASPAs, fetched from every publication point.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import require_peer
from peers import (
    expected_vrps,
    free_port,
    ipv6_loopback_available,
    make_tls_ca,
    nginx_tls_sites,
    peer_scratch,
    public_dir,
    rsync_daemon,
    run_rpki_client,
    run_rpkirepo,
    unexpected_lines,
)
from rpkirepo.errors import ConfigError, Reason, StorageError
from rpkirepo.objects import (
    AsProviderAttestation,
    Certificate,
    Crl,
    Manifest,
    ObjectKind,
    RouteOriginAttestation,
    SignedObject,
    mtime_of,
    read_object,
)
from rpkirepo.testbed import (
    Testbed,
    TestbedOptions,
    Vrp,
    advance,
    generate,
    parse_pub_point,
)
from rpkirepo.testbed.state import load_state

BASE = "rsync://localhost/repo/"
RRDP = "https://localhost:3000/rrdp/"
A_RSYNC, A_RRDP = "rsync://rpki-a.localhost:8873/a/", "https://rpki-a.localhost/rrdp/"
B_RSYNC = "rsync://localhost/other/"  # the main host, another module; rsync only
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
KINDS = {
    "cer": {ObjectKind.CA_CERTIFICATE, ObjectKind.TA_CERTIFICATE},
    "crl": {ObjectKind.CRL},
    "mft": {ObjectKind.MANIFEST},
    "roa": {ObjectKind.ROA},
    "asa": {ObjectKind.ASPA},
    "gbr": {ObjectKind.GBR},
}
#: Round-robin by CA number over (main, A, B): ca-1 main, ca-2 A, ca-3 B, ca-4 main, ...
HOME = {"ta": 0, "ca-1": 0, "ca-2": 1, "ca-3": 2, "ca-4": 0, "ca-5": 1, "ca-6": 2}


def options(out: Path, **kw: object) -> TestbedOptions:
    args: dict[str, object] = {
        "rsync_base": BASE,
        "rrdp_base": RRDP,
        "pub_points": ((A_RSYNC, A_RRDP), (B_RSYNC, None)),
        "cas": 6,
        "depth": 2,
        "roas_per_ca": 2,
        "seed": 5,
        "now": NOW,
        "aspa_version": 1,  # the profile rpkirepo's reader parses
    }
    args.update(kw)
    return TestbedOptions(out_dir=out, **args)  # type: ignore[arg-type]


class Layout:
    """The documented layout, written out here (not asked of the generator): each point's
    rsync module URI, its directory, its notification URI."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.modules = [
            ("rsync://localhost/repo/", out / "repository", RRDP + "notification.xml"),
            (
                "rsync://rpki-a.localhost:8873/a/",
                out / "repositories" / "rpki-a.localhost_8873" / "a",
                A_RRDP + "notification.xml",
            ),
            ("rsync://localhost/other/", out / "repositories" / "localhost" / "other", None),
        ]

    def path_of(self, uri: str) -> Path:
        for module, directory, _notify in self.modules:
            if uri.startswith(module):
                return directory / uri[len(module) :]
        raise AssertionError(f"{uri} is in no publication point")

    def uri_of(self, path: Path) -> str:
        for module, directory, _notify in self.modules:
            if path.is_relative_to(directory):
                return module + str(path.relative_to(directory))
        raise AssertionError(f"{path} is in no publication point")

    def files(self) -> list[Path]:
        return sorted(p for _m, d, _n in self.modules for p in d.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Testbed:
    return generate(options(tmp_path_factory.mktemp("pubpoints")))


def read(path: Path) -> Certificate | Crl | SignedObject:
    return read_object(path.read_bytes(), name=path.name)


def test_layout(bed: Testbed) -> None:
    layout = Layout(bed.out_dir)
    # Each point's directory holds exactly the CAs the round-robin gives it (the TA: main).
    for i, (_module, directory, _notify) in enumerate(layout.modules):
        dirs = sorted(p.name for p in directory.iterdir() if p.is_dir())
        assert dirs == sorted(n for n, home in HOME.items() if home == i), directory
    assert sorted(p.name for p in (bed.out_dir / "repositories").iterdir()) == [
        "localhost",
        "rpki-a.localhost_8873",
    ]
    # Testbed.files: every file of every point, relative to repository/.
    on_disk = {p.resolve() for p in layout.files()}
    assert on_disk == {(bed.repository / rel).resolve() for rel in bed.files}
    # ta.cer, 7 CRLs and manifests, 6 CA certificates, 12 ROAs, 6 ASPAs, 6 GBRs
    assert len(bed.files) == len(on_disk) == 1 + 7 * 2 + 6 + 6 * 2 + 6 + 6
    # Testbed.points: the same, per point.
    assert [(p.rsync_base, p.rrdp_base) for p in bed.points] == [
        (BASE, RRDP),
        (A_RSYNC, A_RRDP),
        (B_RSYNC, None),
    ]
    for i, point in enumerate(bed.points):
        module, directory, _notify = layout.modules[i]
        assert (point.module_uri, point.directory) == (module, directory)
        assert point.cas == tuple(n for n, home in HOME.items() if home == i)
        assert {directory / rel for rel in point.files} == set(directory.rglob("*.*"))
    # The main point is laid out as before: a single-point testbed's paths, unchanged.
    assert "ta.cer" in bed.files and "ta/ta.mft" in bed.files
    assert "../repositories/rpki-a.localhost_8873/a/ca-2/ca-2.mft" in bed.files


def test_every_object_reads_and_points_where_it_should(bed: Testbed) -> None:
    layout = Layout(bed.out_dir)
    state = load_state(bed.out_dir)
    checked_certs = set()
    for path in layout.files():
        obj = read(path)
        ext = path.suffix[1:]
        assert obj.kind in KINDS[ext], path
        data = path.read_bytes()
        assert int(path.stat().st_mtime) == mtime_of(data, path.name).seconds, path  # RFC 9589
        uri = layout.uri_of(path)
        cert = obj.ee_certificate if isinstance(obj, SignedObject) else obj
        if isinstance(obj, SignedObject):
            assert obj.signing_time == NOW, path
            assert obj.ee_certificate.signed_object == (uri,), path
        if not isinstance(cert, Certificate) or cert.kind is ObjectKind.TA_CERTIFICATE:
            continue
        # AIA and CRLDP name files at those URIs, in the issuer's own point.
        issuer = path.parent.name  # the point of the CA that issued it: NAME/
        for ref in (*cert.ca_issuers, *cert.crl_distribution_points):
            assert layout.path_of(ref).is_file(), (path, ref)
        (crl_uri,) = cert.crl_distribution_points
        assert crl_uri == layout.modules[HOME[issuer]][0] + f"{issuer}/{issuer}.crl", path
        if ext != "cer":
            continue
        # A CA certificate lies in its parent's point, with its own point's SIA.
        name = path.stem
        assert state.ca(name).parent == issuer
        assert path.parent.parent == layout.modules[HOME[issuer]][1], path
        module, directory, notify = layout.modules[HOME[name]]
        assert cert.ca_repository == (f"{module}{name}/",), path
        assert cert.rpki_manifest == (f"{module}{name}/{name}.mft",), path
        assert layout.path_of(cert.rpki_manifest[0]) == directory / name / f"{name}.mft"
        assert cert.rpki_notify == (() if notify is None else (notify,)), path
        checked_certs.add(name)
    assert checked_certs == set(HOME) - {"ta"}
    # Some parent and child live in different points, both ways.
    cross = {(HOME[c.parent], HOME[c.name]) for c in state.cas if c.parent is not None}
    assert len({(p, c) for p, c in cross if p != c}) >= 2, cross
    ta = read(bed.repository / "ta.cer")
    assert isinstance(ta, Certificate)
    assert ta.ca_repository == (BASE + "ta/",) and ta.rpki_notify == (RRDP + "notification.xml",)


def check_points(out: Path, when: datetime) -> dict[str, int]:
    """Every manifest lists exactly the files of its directory with their hashes, is current at
    ``when`` and has the number of its CRL; the ROAs on disk give the expected VRPs.  Returns
    the manifest numbers by CA."""
    layout = Layout(out)
    numbers = {}
    for path in layout.files():
        obj = read(path)
        if isinstance(obj, SignedObject):
            assert obj.ee_certificate.signed_object == (layout.uri_of(path),), path
        if path.suffix != ".mft":
            continue
        assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
        mft = obj.content
        others = {p.name for p in path.parent.iterdir()} - {path.name}
        assert {e.file for e in mft.files} == others, path
        for entry in mft.files:
            assert entry.hash == hashlib.sha256((path.parent / entry.file).read_bytes()).digest()
        assert mft.this_update <= when < mft.next_update, path
        crl = read(path.with_suffix(".crl"))
        assert isinstance(crl, Crl) and crl.crl_number == mft.manifest_number, path
        assert crl.authority_key_identifier == obj.ee_certificate.authority_key_identifier
        assert path.parent.name not in numbers, "one manifest per point"
        numbers[path.parent.name] = mft.manifest_number
    rows = (out / "expected-vrps.csv").read_text().splitlines()[1:]
    want = {Vrp(int(a[2:]), p, int(m)) for a, p, m, _ta, _x in (r.split(",") for r in rows)}
    got = set()
    aspas = 0
    for path in layout.files():
        obj = read(path)
        if isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation):
            roa = obj.content
            got |= {Vrp(roa.as_id, str(p.prefix), p.effective_max_length) for p in roa.prefixes}
        if isinstance(obj, SignedObject) and isinstance(obj.content, AsProviderAttestation):
            aspas += 1
    assert got == want and aspas == 6
    independent: set[tuple[int, str, int]] = set()  # peers' own ROA parser, point by point
    for _module, directory, _notify in layout.modules:
        independent |= expected_vrps(directory)
    assert {Vrp(a, p, m) for a, p, m in independent} == want
    return numbers


def test_manifests_and_vrps_span_the_points(bed: Testbed) -> None:
    numbers = check_points(bed.out_dir, NOW)
    assert numbers == dict.fromkeys(HOME, 1)
    assert len(bed.vrps) > 0


def test_advance_across_points(tmp_path: Path) -> None:
    """Four steps, each with a key roll: every point stays consistent, each step writes and
    removes exactly the files it names, in whichever point they live, and a rolled CA's new
    certificate (in its parent's point) keeps its own point's SIA.  With this seed the steps
    roll CAs of both extra points, one of them the parent of a CA of the main point, one the
    child of a CA of the main point, and add or revoke ROAs in all three points."""
    bed = generate(options(tmp_path))
    layout = Layout(bed.out_dir)
    numbers = check_points(bed.out_dir, NOW)
    when = NOW
    rolled: list[str] = []
    touched: set[int] = set()
    for step_number in range(1, 5):
        when += timedelta(minutes=30)
        before = {p.resolve(): p.read_bytes() for p in layout.files()}
        old_state = load_state(bed.out_dir)
        step = advance(bed.out_dir, now=when, roll_key=True)
        after = {p.resolve(): p.read_bytes() for p in layout.files()}
        new_state = load_state(bed.out_dir)
        new_numbers = check_points(bed.out_dir, when)
        assert all(new_numbers[k] > numbers[k] for k in numbers), (numbers, new_numbers)
        numbers = new_numbers
        # The named files changed, and only they (paths relative to repository/).
        written = {(bed.repository / rel).resolve() for rel in step.written}
        removed = {(bed.repository / rel).resolve() for rel in step.removed}
        assert set(before) - set(after) == removed
        changed = {p for p in after if after[p] != before.get(p)}
        assert changed == written, (sorted(changed ^ written), step)
        for name in HOME:  # every CA re-issued its manifest, in its own point
            stem = new_state.ca(name).stem
            assert layout.modules[HOME[name]][1] / name / f"{stem}.mft" in written, name
        for rel in (step.added_roa, step.revoked_roa):
            assert rel is not None
            touched.add(HOME[Path(rel).parent.name])
        assert step.rolled_ca is not None
        name = step.rolled_ca
        rolled.append(name)
        parent = old_state.ca(name).parent
        assert parent is not None
        # The new certificate is in the parent's point, same URI, new key, its own SIA.
        cert_path = layout.modules[HOME[parent]][1] / parent / f"{name}.cer"
        new = read(cert_path)
        old = read_object(before[cert_path.resolve()], name="x.cer")
        assert isinstance(new, Certificate) and isinstance(old, Certificate)
        assert new.subject_key_identifier != old.subject_key_identifier
        module, directory, notify = layout.modules[HOME[name]]
        stem = f"{name}-k{step_number}"
        assert new.ca_repository == (f"{module}{name}/",)
        assert new.rpki_manifest == (f"{module}{name}/{stem}.mft",)
        assert new.rpki_notify == (() if notify is None else (notify,))
        parent_stem = new_state.ca(parent).stem
        crl = read(layout.modules[HOME[parent]][1] / parent / f"{parent_stem}.crl")
        assert isinstance(crl, Crl) and old.serial in crl.revoked_serials
        for path in (directory / name).iterdir():  # all re-signed under the new key
            obj = read(path)
            issued = obj.ee_certificate if isinstance(obj, SignedObject) else obj
            assert issued.authority_key_identifier == new.subject_key_identifier, path
        for child in old_state.ca(name).children:  # re-issued here, their own points' SIA
            cert = read(directory / name / f"{child}.cer")
            child_module = layout.modules[HOME[child]][0]
            assert isinstance(cert, Certificate)
            assert cert.rpki_manifest == (f"{child_module}{child}/{child}.mft",)
    assert touched == {0, 1, 2}, touched
    assert {HOME[n] for n in rolled} >= {1, 2}, rolled
    state = load_state(bed.out_dir)
    parent_home = {n: HOME[p] for n in rolled if (p := state.ca(n).parent) is not None}
    assert any(parent_home[n] == 0 and HOME[n] != 0 for n in rolled), rolled
    assert any(HOME[n] != 0 and any(HOME[c] == 0 for c in state.ca(n).children) for n in rolled), (
        rolled
    )
    assert state.pub_points == ((A_RSYNC, A_RRDP), (B_RSYNC, None))
    assert {ca.name: ca.point for ca in state.cas} == HOME


def test_ta_certificate_in_an_extra_point(tmp_path: Path) -> None:
    ta_uri = A_RSYNC + "ta.cer"
    bed = generate(options(tmp_path, cas=2, depth=1, pub_points=((A_RSYNC, None),),
                           ta_uris=(ta_uri,)))  # fmt: skip
    placed = tmp_path / "repositories" / "rpki-a.localhost_8873" / "a" / "ta.cer"
    assert placed.read_bytes() == bed.ta_certificate.read_bytes()
    assert "ta.cer" not in bed.files
    assert "../repositories/rpki-a.localhost_8873/a/ta.cer" in bed.files
    cert = read(bed.repository / "ta" / "ca-1.cer")
    assert isinstance(cert, Certificate) and cert.ca_issuers == (ta_uri,)
    # ca-2 lives in A, rsync only there: no rpkiNotify.
    ca2 = read(bed.repository / "ta" / "ca-2.cer")
    assert isinstance(ca2, Certificate)
    assert ca2.ca_repository == (A_RSYNC + "ca-2/",) and ca2.rpki_notify == ()


@pytest.mark.parametrize(
    ("points", "kw", "words"),
    [
        (((BASE + "sub/", None),), {}, "of its own"),
        ((("rsync://LOCALHOST/repo/x/", None),), {}, "of its own"),
        (((A_RSYNC, None), (A_RSYNC + "b/", None)), {}, "of its own"),
        ((("rsync://h.example/m", None),), {}, "slash"),
        ((("rsync://h.example/m/", "https://h.example/rrdp"),), {}, "slash"),
        ((("https://h.example/m/", None),), {}, "bad --pub-point"),
        ((("rsync://h.example/m/", "rsync://h.example/m/"),), {}, "bad --pub-point"),
        ((("rsync://h.example/m/", RRDP),), {}, "taken"),
        ((("rsync://h.example/m/", A_RRDP), (A_RSYNC, A_RRDP)), {}, "taken"),
        (((A_RSYNC, None), (B_RSYNC, None)), {"cas": 2, "depth": 1}, "at least 3 CAs"),
    ],
)
def test_option_errors(
    tmp_path: Path, points: tuple[tuple[str, str | None], ...], kw: dict[str, int], words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        generate(options(tmp_path, pub_points=points, **kw))
    assert err.value.reason is Reason.USAGE and words in str(err.value)
    assert not (tmp_path / "repository").exists()


def test_a_point_directory_must_be_empty(tmp_path: Path) -> None:
    taken = tmp_path / "repositories" / "localhost" / "other"
    taken.mkdir(parents=True)
    (taken / "x.roa").write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        generate(options(tmp_path))
    assert "not empty" in str(err.value) and "other" in str(err.value)


@pytest.mark.parametrize("text", ["", ",https://h/", "rsync://h/m/,", "rsync://h/m/,a,b"])
def test_parse_pub_point_refuses(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pub_point(text)
    assert err.value.reason is Reason.USAGE


def test_parse_pub_point() -> None:
    assert parse_pub_point(A_RSYNC + "," + A_RRDP) == (A_RSYNC, A_RRDP)
    assert parse_pub_point(B_RSYNC) == (B_RSYNC, None)


def test_old_state_without_points_still_advances(tmp_path: Path) -> None:
    bed = generate(options(tmp_path, pub_points=(), cas=2, depth=1))
    path = bed.out_dir / "testbed-state.json"
    doc = json.loads(path.read_text())
    assert doc["pub_points"] == [] and {ca["point"] for ca in doc["cas"]} == {0}
    del doc["pub_points"]
    for ca in doc["cas"]:
        del ca["point"]
    path.write_text(json.dumps(doc))
    step = advance(bed.out_dir, now=NOW + timedelta(hours=1))
    assert all(not rel.startswith("../") for rel in step.written)
    assert load_state(bed.out_dir).pub_points == ()
    assert not (bed.out_dir / "repositories").exists()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["cas"][1].update(point=3), "publication point of CA"),
        (lambda d: d["cas"][0].update(point=1), "publication point of CA ta"),
        (lambda d: d.update(pub_points=[["rsync://h/m", None], [B_RSYNC, None]]), "directory"),
        (lambda d: d.update(pub_points=[["http://h/m/", None], [B_RSYNC, None]]), "point"),
    ],
)
def test_corrupt_points_in_the_state(
    bed: Testbed, tmp_path: Path, edit: object, words: str
) -> None:
    doc = json.loads((bed.out_dir / "testbed-state.json").read_text())
    edit(doc)  # type: ignore[operator]
    (tmp_path / "testbed-state.json").write_text(json.dumps(doc))
    with pytest.raises(StorageError) as err:
        load_state(tmp_path)
    assert err.value.reason is Reason.STATE_CORRUPT and words in str(err.value)


def test_scale_mode_spreads_over_the_points(tmp_path: Path) -> None:
    bed = generate(options(tmp_path, scale=100, jobs=1, pub_points=((B_RSYNC, None),)))
    main, other = bed.points
    assert main.cas == ("ta", "ca-1", "ca-3", "ca-5") and other.cas == ("ca-2", "ca-4")
    assert sorted({rel.split("/")[0] for rel in other.files}) == ["ca-2", "ca-4"]
    for point in bed.points:
        for rel in point.files:
            obj = read(point.directory / rel)
            assert obj.kind in KINDS[rel.rsplit(".", 1)[1]]
    cert = read(bed.repository / "ta" / "ca-2.cer")
    assert isinstance(cert, Certificate) and cert.ca_repository == (B_RSYNC + "ca-2/",)


def test_cli(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "rpkirepo", "testbed", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    out = tmp_path / "tb"
    made = run(
        str(out), "--cas", "3", "--depth", "1", "--roas-per-ca", "1", "--rrdp-base", RRDP,
        "--pub-point", f"{A_RSYNC},{A_RRDP}", "--pub-point", B_RSYNC,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    a_dir = out / "repositories" / "rpki-a.localhost_8873" / "a"
    b_dir = out / "repositories" / "localhost" / "other"
    assert f"repository: {a_dir}" in made.stdout and f"repository: {b_dir}" in made.stdout
    assert (a_dir / "ca-2" / "ca-2.mft").is_file() and (b_dir / "ca-3" / "ca-3.mft").is_file()
    # ta.cer; the TA's 3 certificates, CRL and manifest; per CA a CRL, manifest, ROA, ASPA, GBR.
    assert made.stdout.startswith("testbed: 21 objects, "), made.stdout
    stepped = run("advance", str(out))
    assert stepped.returncode == 0, stepped.stderr
    for argv, words in [
        (("advance", str(out), "--pub-point", B_RSYNC), "not --pub-point"),
        ((str(tmp_path / "x"), "--pub-point", "rsync://h/m/,a,b"), "--pub-point takes"),
        ((str(tmp_path / "y"), "--pub-point", "rsync://h/m"), "slash"),
        ((str(tmp_path / "z"), "--pub-point", BASE), "of its own"),
    ]:
        proc = run(*argv)
        assert proc.returncode == 2 and words in proc.stderr, (argv, proc.stderr)


# ---- end to end: rpki-client fetches from every publication point --------------------------

EXPECTED_STDERR = [  # as in test_testbed_peer.py
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: all files parsed: generating output",
]
HOSTS = ("localhost", "rpki-a.localhost", "rpki-b.localhost")
MODULE = {"localhost": "repo", "rpki-a.localhost": "a", "rpki-b.localhost": "b"}


@pytest.fixture(scope="module")
def peer_root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-pubpoints-", "rpki-client") as path:
        yield path


@pytest.mark.peer
@pytest.mark.parametrize("rsync_only", [False, True], ids=["rrdp", "rsync"])
def test_rpki_client_fetches_every_point(peer_root: Path, rsync_only: bool) -> None:
    """Main point on localhost (RRDP), rpki-a.localhost (RRDP, module ``a``), rpki-b.localhost
    (rsync only, module ``b``); one nginx, one rsync daemon, free ports."""
    for peer in ("nginx", "rsync", "rpki-client", "unshare"):
        require_peer(peer)
    mode = "rsync" if rsync_only else "rrdp"
    root = public_dir(peer_root / mode)
    loopback = ("127.0.0.1", "::1") if ipv6_loopback_available() else ("127.0.0.1",)
    https_port, rsync_port = free_port(loopback), free_port()
    rsync = {h: f"rsync://{h}:{rsync_port}/{MODULE[h]}/" for h in HOSTS}
    rrdp = {h: f"https://{h}:{https_port}/rrdp/" for h in HOSTS}
    testbed = root / "testbed"
    run_rpkirepo(
        "testbed", str(testbed), "--cas", "5", "--depth", "2", "--roas-per-ca", "2",
        "--seed", "3", "--rsync-base", rsync["localhost"], "--rrdp-base", rrdp["localhost"],
        "--pub-point", f"{rsync['rpki-a.localhost']},{rrdp['rpki-a.localhost']}",
        "--pub-point", rsync["rpki-b.localhost"],
        "--ta-uri", f"https://localhost:{https_port}/ta/ta.cer",
        "--ta-uri", rsync["localhost"] + "ta.cer",
    )  # fmt: skip
    sources = {
        "localhost": testbed / "repository",
        "rpki-a.localhost": testbed / "repositories" / f"rpki-a.localhost_{rsync_port}" / "a",
        "rpki-b.localhost": testbed / "repositories" / f"rpki-b.localhost_{rsync_port}" / "b",
    }
    published = {}
    for host, source in sources.items():
        out = public_dir(root / "publish" / host)
        run_rpkirepo(
            "publish", str(source), "--rsync-base", rsync[host], "--https-base", rrdp[host],
            "--state-dir", str(out / "state"), "--rrdp-dir", str(out / "rrdp"),
            "--rsync-dir", str(out / "rsync"),
        )  # fmt: skip
        published[host] = out
    tls = make_tls_ca(root / "tls", names=HOSTS)
    sites = {  # rpki-b.localhost is rsync only: nginx has nothing for it (421)
        "localhost": {"/rrdp/": published["localhost"] / "rrdp", "/ta/ta.cer": testbed / "ta.cer"},
        "rpki-a.localhost": {"/rrdp/": published["rpki-a.localhost"] / "rrdp"},
    }
    modules = {MODULE[h]: published[h] / "rsync" / "current" for h in HOSTS}
    with (
        nginx_tls_sites(
            root / "nginx", tls, sites, port=https_port, binary=require_peer("nginx")
        ) as nginx,
        rsync_daemon(
            root / "rsyncd", modules, port=rsync_port, binary=require_peer("rsync")
        ) as rsyncd,
    ):
        result = run_rpki_client(
            root / "rpki-client",
            testbed / "ta.tal",
            binary=require_peer("rpki-client"),
            trust=tls.ca_cert,
            hosts=dict.fromkeys(HOSTS, "127.0.0.1"),
            rsync_only=rsync_only,
        )
        ctx = f"{result.describe()}\n{nginx.logs()}\n--- rsyncd ---\n{rsyncd.log_text()}"
        assert result.returncode == 0, ctx
        warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
        assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n\n" + ctx
        fetched = {(str(e["host"]), str(e["uri"])) for e in nginx.access_entries()}
        requested = {m: rsyncd.module_requests(m) for m in modules}
        if rsync_only:
            assert fetched == set(), ctx
            assert all(requested.values()), (requested, ctx)
        else:
            for host in ("localhost", "rpki-a.localhost"):
                notify = rrdp[host] + "notification.xml"
                assert f"rpki-client: {notify}: downloading snapshot" in result.stderr, ctx
                assert (host, "/rrdp/notification.xml") in fetched, ctx
                assert any(h == host and u.endswith("snapshot.xml") for h, u in fetched), ctx
            assert {h for h, _u in fetched} == {"localhost", "rpki-a.localhost"}, ctx
            # Only the rsync-only point is fetched over rsync.
            assert requested["repo"] == requested["a"] == [] and requested["b"], (requested, ctx)
        # rpki-client names an rsync repository by its module URI, without the slash.
        over_rsync = HOSTS if rsync_only else ("rpki-b.localhost",)
        for host in over_rsync:
            assert f"pulling from {rsync[host].rstrip('/')}\n" in result.stderr, ctx

    meta = result.metadata()
    want_meta = {
        "tals": 1, "invalidtals": 0, "certificates": 6, "invalidcertificates": 0,
        "manifests": 6, "failedmanifests": 0, "stalemanifests": 0, "crls": 6,
        "roas": 10, "failedroas": 0, "invalidroas": 0, "aspas": 5, "invalidaspas": 0, "gbrs": 5,
    }  # fmt: skip
    assert {k: meta.get(k) for k in want_meta} == want_meta, ctx
    # rpki-client's cache holds every point's files, below its host (and port for rsync).
    got_csv = (result.outdir / "csv").read_text().splitlines()
    want_csv = (testbed / "expected-vrps.csv").read_text().splitlines()
    assert got_csv[0] == want_csv[0] and set(got_csv[1:]) == set(want_csv[1:]), (
        f"missing: {sorted(set(want_csv) - set(got_csv))}\n"
        f"unexpected: {sorted(set(got_csv) - set(want_csv))}\n{ctx}"
    )
    doc = json.loads((testbed / "expected-vrps.json").read_text())
    auth = result.output_json()["provider_authorizations"]
    assert isinstance(auth, dict)
    for family in ("ipv4", "ipv6"):
        got = sorted(auth[family], key=lambda e: str(e["customer_asid"]))
        assert got == sorted(doc["aspas"], key=lambda e: str(e["customer_asid"])), (family, ctx)
