"""The testbed generator, read back with rpkirepo's own object reader.

A small testbed (3 CAs over 2 levels, 3 ROAs each) is generated once per module and every file
is read with :func:`rpkirepo.objects.read_object`: the right kind for its extension, signing-time
present (RFC 9589) and equal to the file's mtime rule, EE certificates pointing at their own
file, issuer certificate and CRL, manifests listing exactly the other files of their publication
point with matching SHA-256 hashes, and the ROAs' VRPs equal to what the generator promised (also
parsed independently with :func:`peers.expected_vrps`).  Determinism across runs with one seed,
the RFC 3779 encodings and option checking are tested on their own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from peers import expected_vrps
from rpkirepo.errors import ConfigError, Reason, RemoteProtocolError
from rpkirepo.objects import (
    AsProviderAttestation,
    Certificate,
    Crl,
    Manifest,
    ObjectKind,
    RouteOriginAttestation,
    SignedObject,
    TimeSource,
    mtime_of,
    read_object,
)
from rpkirepo.testbed import ExpectedAspa, Testbed, TestbedOptions, Vrp, der, generate
from rpkirepo.testbed.resources import AsRange, ResourceSet

BASE = "rsync://localhost/repo/"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
KINDS = {
    "cer": {ObjectKind.CA_CERTIFICATE, ObjectKind.TA_CERTIFICATE},
    "crl": {ObjectKind.CRL},
    "mft": {ObjectKind.MANIFEST},
    "roa": {ObjectKind.ROA},
    "asa": {ObjectKind.ASPA},
    "gbr": {ObjectKind.GBR},
}


def options(out: Path, **kw: object) -> TestbedOptions:
    args: dict[str, object] = {
        "rsync_base": BASE,
        "rrdp_base": "https://localhost:3000/rrdp/",
        "cas": 3,
        "depth": 2,
        "roas_per_ca": 3,
        "seed": 7,
        "now": NOW,
        "aspa_version": 1,  # the profile rpkirepo's reader parses (see test_aspa_version_0)
    }
    args.update(kw)
    return TestbedOptions(out_dir=out, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Testbed:
    return generate(options(tmp_path_factory.mktemp("testbed")))


def read(bed: Testbed, rel: str) -> Certificate | Crl | SignedObject:
    path = bed.repository / rel
    return read_object(path.read_bytes(), name=path.name)


def test_every_file_is_listed_and_read_with_its_kind(bed: Testbed) -> None:
    on_disk = {str(p.relative_to(bed.repository)) for p in bed.repository.rglob("*") if p.is_file()}
    assert on_disk == set(bed.files)
    counts: dict[str, int] = {}
    for rel, ext in bed.files.items():
        assert rel.endswith("." + ext)
        obj = read(bed, rel)
        assert obj.kind in KINDS[ext], rel
        counts[ext] = counts.get(ext, 0) + 1
    # TA + 3 CAs (+ the TA certificate published at BASE/ta.cer); one CRL and manifest each.
    assert counts == {"cer": 4, "crl": 4, "mft": 4, "roa": 9, "asa": 3, "gbr": 3}
    assert read(bed, "ta.cer").kind is ObjectKind.TA_CERTIFICATE
    assert bed.ta_certificate.read_bytes() == (bed.repository / "ta.cer").read_bytes()


def test_signed_objects_have_signing_time_and_point_at_themselves(bed: Testbed) -> None:
    for rel, ext in bed.files.items():
        obj = read(bed, rel)
        data = (bed.repository / rel).read_bytes()
        if isinstance(obj, SignedObject):
            assert obj.signing_time == NOW, rel  # RFC 9589: always present
            ee = obj.ee_certificate
            assert ee.kind is ObjectKind.EE_CERTIFICATE
            assert ee.signed_object == (BASE + rel,), rel
            assert obj.not_before == NOW - timedelta(hours=1)
            t = mtime_of(data, rel)
            assert (t.source, t.seconds) == (TimeSource.SIGNING_TIME, int(NOW.timestamp()))
        else:
            assert mtime_of(data, rel).seconds == int((NOW - timedelta(hours=1)).timestamp())
        # The file's mtime is what publish would give it (RFC 9589).
        assert int((bed.repository / rel).stat().st_mtime) == mtime_of(data, rel).seconds, rel
        cert = obj.ee_certificate if isinstance(obj, SignedObject) else obj
        if isinstance(cert, Certificate) and cert.kind is not ObjectKind.TA_CERTIFICATE:
            # AIA and CRLDP name files of the repository, published at those URIs.
            for uri in (*cert.ca_issuers, *cert.crl_distribution_points):
                assert uri.startswith(BASE) and uri[len(BASE) :] in bed.files, (rel, uri)
            assert len(cert.ca_issuers) == len(cert.crl_distribution_points) == 1
        if isinstance(cert, Certificate) and ext == "cer":
            point = cert.ca_repository[0]
            assert cert.rpki_manifest[0].startswith(point)
            assert cert.rpki_manifest[0][len(BASE) :] in bed.files
            assert cert.rpki_notify == ("https://localhost:3000/rrdp/notification.xml",)


def test_manifests_list_every_other_file_with_its_hash(bed: Testbed) -> None:
    manifests = [rel for rel, ext in bed.files.items() if ext == "mft"]
    assert len(manifests) == 4
    for rel in manifests:
        obj = read(bed, rel)
        assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
        mft = obj.content
        assert (mft.this_update, mft.next_update) == (obj.not_before, obj.not_after)
        directory = (bed.repository / rel).parent
        others = {p.name for p in directory.iterdir()} - {Path(rel).name}
        assert {e.file for e in mft.files} == others, rel
        for entry in mft.files:
            assert entry.hash == hashlib.sha256((directory / entry.file).read_bytes()).digest()
        crl = read(bed, str(Path(rel).with_suffix(".crl")))
        assert isinstance(crl, Crl) and crl.revoked_serials == ()
        assert crl.authority_key_identifier == obj.ee_certificate.authority_key_identifier


def test_roas_give_the_promised_vrps(bed: Testbed) -> None:
    seen: set[Vrp] = set()
    v4 = v6 = with_max = without_max = 0
    for rel, ext in bed.files.items():
        if ext != "roa":
            continue
        obj = read(bed, rel)
        assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
        assert rel.endswith(f"-AS{obj.content.as_id}.roa")
        for p in obj.content.prefixes:
            seen.add(Vrp(obj.content.as_id, str(p.prefix), p.effective_max_length))
            v4 += p.prefix.version == 4
            v6 += p.prefix.version == 6
            with_max += p.max_length is not None
            without_max += p.max_length is None
    assert seen == bed.vrps
    assert v4 and v6 and with_max and without_max
    independent = {Vrp(a, p, m) for a, p, m in expected_vrps(bed.repository)}
    assert independent == bed.vrps


def test_aspas_give_the_promised_attestations(bed: Testbed) -> None:
    seen = set()
    for rel, ext in bed.files.items():
        if ext == "asa":
            obj = read(bed, rel)
            assert isinstance(obj, SignedObject)
            assert isinstance(obj.content, AsProviderAttestation)
            seen.add(ExpectedAspa(obj.content.customer_asid, obj.content.providers))
            assert list(obj.content.providers) == sorted(set(obj.content.providers))
    assert seen == bed.aspas and len(seen) == 3


def test_expected_output_files(bed: Testbed) -> None:
    expires = int((NOW + timedelta(days=7)).timestamp())
    rows = (bed.out_dir / "expected-vrps.csv").read_text().splitlines()
    assert rows[0] == "ASN,IP Prefix,Max Length,Trust Anchor,Expires"
    assert {tuple(r.split(",")) for r in rows[1:]} == {
        (f"AS{v.asn}", v.prefix, str(v.max_length), "ta", str(expires)) for v in bed.vrps
    }
    assert len(rows) == len(bed.vrps) + 1
    doc = json.loads((bed.out_dir / "expected-vrps.json").read_text())
    assert {
        (r["asn"], r["prefix"], r["maxLength"], r["ta"], r["expires"]) for r in doc["roas"]
    } == {(v.asn, v.prefix, v.max_length, "ta", expires) for v in bed.vrps}
    assert {(a["customer_asid"], tuple(a["providers"])) for a in doc["aspas"]} == {
        (a.customer_asid, a.providers) for a in bed.aspas
    }
    tal = bed.tal.read_text().splitlines()
    assert [line for line in tal if "://" in line] == [BASE + "ta.cer"]
    assert tal[tal.index("") + 1 :], "the TAL ends with the key"


def test_same_seed_same_structure_other_seed_other(tmp_path: Path) -> None:
    a = generate(options(tmp_path / "a"))
    b = generate(options(tmp_path / "b"))
    c = generate(options(tmp_path / "c", seed=8))
    assert a.files == b.files and a.vrps == b.vrps and a.aspas == b.aspas
    for name in ("expected-vrps.csv", "expected-vrps.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    # keys are fresh in every run, so the objects themselves differ
    assert (a.repository / "ta.cer").read_bytes() != (b.repository / "ta.cer").read_bytes()
    assert c.vrps != a.vrps


def test_aspa_version_0_is_the_profile_the_reader_does_not_parse(tmp_path: Path) -> None:
    """Version 0 (what rpki-client 8.2 parses) lacks the version field and wraps providers in
    ProviderAS: rpkirepo's reader, which follows draft -15+, refuses its eContent (a known
    gap, docs/testbed.md); everything else reads the same."""
    bed = generate(options(tmp_path, aspa_version=0, cas=1, depth=1, roas_per_ca=1))
    (asa,) = [rel for rel, ext in bed.files.items() if ext == "asa"]
    with pytest.raises(RemoteProtocolError) as info:
        read(bed, asa)
    assert info.value.reason is Reason.OBJECT_MALFORMED
    data = (bed.repository / asa).read_bytes()
    assert mtime_of(data, asa).source is TimeSource.SIGNING_TIME  # the envelope is fine


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"depth": 4, "cas": 3}, "--depth"),
        ({"roas_per_ca": 0}, "--roas-per-ca"),
        ({"rsync_base": "rsync://localhost/repo"}, "slash"),
        ({"rsync_base": "https://localhost/repo/"}, "bad URI"),
        ({"aspa_version": 2}, "--aspa-version"),
        ({"days": 0}, "--days"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, kw: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate(options(tmp_path, **kw))
    assert info.value.reason is Reason.USAGE and words in str(info.value)
    assert not (tmp_path / "repository").exists()


def test_cli(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "rpkirepo", "testbed", str(tmp_path / "tb"), "--cas", "2"]
    argv += ["--depth", "2", "--roas-per-ca", "2", "--seed", "3"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("testbed: 17 objects, "), proc.stdout
    assert " 2 ASPAs, " in proc.stdout, proc.stdout
    assert (tmp_path / "tb" / "repository" / "ca-2" / "ca-2.mft").is_file()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 2 and "[usage]" in again.stderr and "not empty" in again.stderr


# ---- encodings -------------------------------------------------------------------------------


def test_rfc3779_canonical_forms() -> None:
    v4 = ipaddress.IPv4Network
    # adjacent and aligned: one prefix (RFC 3779 §2.2.3.8)
    merged = ResourceSet(ipv4=(v4("10.0.1.0/24"), v4("10.0.0.0/24"))).ip_extension()
    assert merged == bytes.fromhex("300e300c04020001 3006 0304010a0000".replace(" ", ""))
    # adjacent, not aligned: a range, min without trailing 0s, max without trailing 1s (§2.2.3.9)
    ranged = ResourceSet(ipv4=(v4("10.0.1.0/24"), v4("10.0.2.0/24"))).ip_extension()
    body = bytes.fromhex("300c 0304000a0001 0304000a0002".replace(" ", ""))
    assert ranged == der.sequence(der.sequence(der.octet_string(b"\x00\x01"), der.sequence(body)))
    # AS: ids and ranges, adjacent merged (§3.2.3.4-§3.2.3.8); inherit is NULL
    asn = ResourceSet(asns=(AsRange(5, 5), AsRange(6, 9), AsRange(64496, 64496))).as_extension()
    assert asn == der.sequence(
        der.context(
            0,
            der.sequence(der.sequence(der.integer(5), der.integer(9)), der.integer(64496)),
        )
    )
    assert ResourceSet(inherit_as=True).as_extension() == bytes.fromhex("3004a0020500")


def test_der_basics() -> None:
    assert der.integer(0) == b"\x02\x01\x00"
    assert der.integer(128) == b"\x02\x02\x00\x80"
    assert der.integer(4_294_967_294) == bytes.fromhex("020500fffffffe")
    assert der.oid("1.2.840.113549.1.9.16.1.24") == bytes.fromhex("060b2a864886f70d0109100118")
    assert der.bit_string(b"\x0a\x80", 9) == bytes.fromhex("0303070a80")
    with pytest.raises(ValueError):
        der.bit_string(b"\x0a\x81", 9)
    assert der.tlv(0x04, bytes(200))[:3] == b"\x04\x81\xc8"
