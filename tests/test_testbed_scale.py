"""The testbed's scale mode (``rpkirepo testbed --scale N``), read back with rpkirepo's reader.

A small scale run (N = 300, on two worker processes) must produce about N objects in per-CA
publication points, every object must be read by :func:`rpkirepo.objects.read_object` with its
mtime rule (:func:`rpkirepo.objects.mtime_of`), and every manifest must list exactly the other
files of its point with matching SHA-256 hashes.  The fast CMS assembly scale mode uses must give
the same bytes as the asn1crypto one.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rpkirepo.errors import ConfigError, Reason, StorageError
from rpkirepo.objects import Manifest, SignedObject, TimeSource, mtime_of, read_object
from rpkirepo.testbed import Testbed, TestbedOptions, cms, generate, generator
from rpkirepo.testbed.certificates import CertKind, CertRequest, issue_certificate
from rpkirepo.testbed.keys import KeyPair, new_key
from rpkirepo.testbed.resources import ResourceSet

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SCALE = 300


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Testbed:
    out = tmp_path_factory.mktemp("scale")
    return generate(TestbedOptions(out_dir=out, scale=SCALE, now=NOW, aspa_version=1, jobs=2))


def test_about_n_objects_in_a_realistic_mix(bed: Testbed) -> None:
    on_disk = {str(p.relative_to(bed.repository)) for p in bed.repository.rglob("*") if p.is_file()}
    assert on_disk == set(bed.files)
    assert abs(len(on_disk) - SCALE) <= SCALE * 0.05
    kinds = Counter(bed.files.values())
    points = {rel.split("/", 1)[0] for rel in on_disk if "/" in rel}
    assert kinds["mft"] == kinds["crl"] == len(points) > 10  # one of each per point
    assert kinds["roa"] > 0.7 * len(on_disk)
    assert kinds["asa"] == kinds["gbr"] == len(points) - 1  # every CA but the TA
    sizes = [(bed.repository / rel).stat().st_size for rel in on_disk if rel.endswith(".roa")]
    assert 1500 <= sum(sizes) / len(sizes) <= 3000
    # No state for `testbed advance`: a scale testbed cannot be advanced.
    assert not (bed.out_dir / "testbed-state.json").exists()
    assert not (bed.out_dir / "keys").exists()


def test_every_object_is_read_with_its_mtime(bed: Testbed) -> None:
    for rel in bed.files:
        path = bed.repository / rel
        data = path.read_bytes()
        read_object(data, name=path.name)
        when = mtime_of(data, rel)
        assert when.source is not TimeSource.NONE, rel
        assert int(path.stat().st_mtime) == when.seconds, rel


def test_manifests_list_exactly_their_point(bed: Testbed) -> None:
    manifests = [rel for rel, kind in bed.files.items() if kind == "mft"]
    for rel in manifests:
        path = bed.repository / rel
        obj = read_object(path.read_bytes(), name=path.name)
        assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
        point = path.parent
        others = {p.name: p.read_bytes() for p in point.iterdir() if p != path}
        listed = {entry.file: entry.hash for entry in obj.content.files}
        assert set(listed) == set(others), rel
        for name, data in others.items():
            assert listed[name] == hashlib.sha256(data).digest(), (rel, name)


def test_vrps_match_the_roas(bed: Testbed) -> None:
    roas = sum(1 for kind in bed.files.values() if kind == "roa")
    assert len(bed.vrps) >= roas
    assert len(bed.aspas) == sum(1 for kind in bed.files.values() if kind == "asa")
    csv = (bed.out_dir / "expected-vrps.csv").read_text().splitlines()
    assert len(csv) == len(bed.vrps) + 1


def test_single_process_gives_the_same_files(bed: Testbed, tmp_path: Path) -> None:
    other = generate(TestbedOptions(out_dir=tmp_path, scale=SCALE, now=NOW, aspa_version=1, jobs=1))
    assert other.files == bed.files
    assert other.vrps == bed.vrps and other.aspas == bed.aspas


def test_fast_cms_is_byte_identical() -> None:
    issuer, ee = new_key(), new_key()
    cert = generate_ee_certificate(issuer, ee)
    for econtent in (b"\x30\x03\x02\x01\x05", b"x" * 300, b"y" * 70000):
        slow = cms.sign_object(cms.OID_ROA, econtent, cert, ee, NOW)
        fast = cms.sign_object_der(cms.OID_ROA, econtent, cert, ee, NOW)
        assert fast == slow


def generate_ee_certificate(issuer: KeyPair, ee: KeyPair) -> bytes:
    req = CertRequest(
        kind=CertKind.EE,
        subject_cn="ee",
        subject_key=ee,
        serial=5,
        not_before=NOW,
        not_after=NOW.replace(year=2027),
        resources=ResourceSet(inherit_ip=True, inherit_as=True),
        signed_object="rsync://localhost/repo/a/x.roa",
        ca_issuers="rsync://localhost/repo/a.cer",
        crl_uri="rsync://localhost/repo/a/a.crl",
    )
    return issue_certificate(req, "issuer", issuer)


def test_a_worker_failing_to_write_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object) -> None:
        raise StorageError(Reason.STORAGE_IO, "nope") from OSError("disk full")

    monkeypatch.setattr(generator, "_flush", failing)  # the forked workers inherit it
    with pytest.raises(StorageError, match="disk full"):
        generate(TestbedOptions(out_dir=tmp_path, scale=SCALE, jobs=2))


@pytest.mark.parametrize("scale", [0, 99, 2_000_001])
def test_scale_out_of_range(tmp_path: Path, scale: int) -> None:
    with pytest.raises(ConfigError) as err:
        generate(TestbedOptions(out_dir=tmp_path, scale=scale))
    assert err.value.reason is Reason.USAGE


def test_cli(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "rpkirepo", "testbed", str(tmp_path / "tb"), "--scale", "100"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "testbed: 103 objects" in run.stdout
    assert (
        "--scale"
        in subprocess.run(
            [sys.executable, "-m", "rpkirepo", "testbed", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
