"""`rpkirepo testbed advance`: churn applied in place, read back with rpkirepo's own reader.

A small testbed (3 CAs over 2 levels, 3 ROAs each) is generated, then advanced: every file must
still read with :func:`rpkirepo.objects.read_object`; only the files :class:`Advance` names may
change; every manifest's number grows and it lists exactly the files of its publication point
with matching hashes; every CRL's number grows and it lists the revoked ROA's EE serial (and the
replaced manifest's) while that ROA's file is gone; the expected VRPs lose the revoked ROA's and
gain the added one's, and agree with the ROAs on disk (also parsed independently with
:func:`peers.expected_vrps`).  Several steps in a row, one with a key roll, stay consistent.
The end-to-end run with rpki-client following the delta is at the end (``peer``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import require_peer
from peers import (
    expected_vrps,
    free_port,
    ipv6_loopback_available,
    peer_scratch,
    public_dir,
    run_rpki_client,
    run_rpkirepo,
    serve_repository,
    unexpected_lines,
)
from rpkirepo.errors import ConfigError, Reason, StorageError
from rpkirepo.objects import (
    Certificate,
    Crl,
    Manifest,
    RouteOriginAttestation,
    SignedObject,
    mtime_of,
    read_object,
)
from rpkirepo.testbed import Advance, Testbed, TestbedOptions, Vrp, advance, generate
from rpkirepo.testbed.state import load_state

BASE = "rsync://localhost/repo/"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=2)


def options(out: Path, **kw: object) -> TestbedOptions:
    args: dict[str, object] = {
        "rsync_base": BASE,
        "rrdp_base": "https://localhost:3000/rrdp/",
        "cas": 3,
        "depth": 2,
        "roas_per_ca": 3,
        "seed": 7,
        "now": NOW,
        "aspa_version": 1,  # the profile rpkirepo's reader parses
    }
    args.update(kw)
    return TestbedOptions(out_dir=out, **args)  # type: ignore[arg-type]


def snapshot(repo: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``repo``: its content and mtime."""
    return {
        str(p.relative_to(repo)): (p.read_bytes(), int(p.stat().st_mtime))
        for p in repo.rglob("*")
        if p.is_file()
    }


def read(repo: Path, rel: str) -> Certificate | Crl | SignedObject:
    path = repo / rel
    return read_object(path.read_bytes(), name=path.name)


def manifest_of(repo: Path, rel: str) -> tuple[SignedObject, Manifest]:
    obj = read(repo, rel)
    assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest), rel
    return obj, obj.content


def crl_of(repo: Path, rel: str) -> Crl:
    obj = read(repo, rel)
    assert isinstance(obj, Crl), rel
    return obj


def disk_vrps(repo: Path) -> set[Vrp]:
    out = set()
    for path in repo.rglob("*.roa"):
        obj = read(repo, str(path.relative_to(repo)))
        assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
        out |= {
            Vrp(obj.content.as_id, str(p.prefix), p.effective_max_length)
            for p in obj.content.prefixes
        }
    return out


def file_vrps(out_dir: Path) -> set[Vrp]:
    rows = (out_dir / "expected-vrps.csv").read_text().splitlines()[1:]
    return {Vrp(int(a[2:]), p, int(m)) for a, p, m, _ta, _x in (r.split(",") for r in rows)}


def check_consistent(out_dir: Path, when: datetime) -> dict[str, int]:
    """Everything on disk reads, every manifest lists exactly its point with the right hashes
    and is current at ``when``, every signed object's EE names itself; returns the manifest
    numbers by publication point."""
    repo = out_dir / "repository"
    numbers = {}
    for path in sorted(repo.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(repo))
        obj = read(repo, rel)
        data = path.read_bytes()
        assert int(path.stat().st_mtime) == mtime_of(data, rel).seconds, rel  # RFC 9589 rule
        if isinstance(obj, SignedObject):
            assert obj.ee_certificate.signed_object == (BASE + rel,), rel
            assert obj.signing_time is not None and obj.signing_time <= when
        if rel.endswith(".mft"):
            ee, mft = manifest_of(repo, rel)
            others = {p.name for p in path.parent.iterdir()} - {path.name}
            assert {e.file for e in mft.files} == others, rel
            for entry in mft.files:
                digest = hashlib.sha256((path.parent / entry.file).read_bytes()).digest()
                assert entry.hash == digest, (rel, entry.file)
            assert mft.this_update <= when < mft.next_update, rel
            crl = crl_of(repo, str(Path(rel).with_suffix(".crl")))
            assert crl.authority_key_identifier == ee.ee_certificate.authority_key_identifier
            assert ee.ee_certificate.serial not in crl.revoked_serials
            assert crl.crl_number == mft.manifest_number, rel  # both start at 1, +1 a step
            assert path.parent.name not in numbers, "one manifest per point"
            numbers[path.parent.name] = mft.manifest_number
    vrps = file_vrps(out_dir)
    assert disk_vrps(repo) == vrps
    assert {Vrp(a, p, m) for a, p, m in expected_vrps(repo)} == vrps
    doc = json.loads((out_dir / "expected-vrps.json").read_text())
    assert {Vrp(r["asn"], r["prefix"], r["maxLength"]) for r in doc["roas"]} == vrps
    return numbers


@dataclass(frozen=True)
class Stepped:
    bed: Testbed
    before: dict[str, tuple[bytes, int]]
    after: dict[str, tuple[bytes, int]]
    step: Advance


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> Stepped:
    bed = generate(options(tmp_path_factory.mktemp("advance")))
    before = snapshot(bed.repository)
    step = advance(bed.out_dir, now=LATER)
    return Stepped(bed, before, snapshot(bed.repository), step)


def test_generate_writes_the_state_and_private_keys(stepped: Stepped) -> None:
    out = stepped.bed.out_dir
    keys = sorted(p.name for p in (out / "keys").iterdir())
    assert keys == ["ca-1.pem", "ca-2.pem", "ca-3.pem", "ta.pem"]
    assert (out / "keys").stat().st_mode & 0o777 == 0o700
    for name in keys:
        assert (out / "keys" / name).stat().st_mode & 0o777 == 0o600
    state = load_state(out)
    assert state.generation == 1 and state.signing_time == LATER
    assert [ca.name for ca in state.cas] == ["ta", "ca-1", "ca-2", "ca-3"]
    assert not (stepped.bed.repository / "testbed-state.json").exists()


def test_only_the_named_files_change(stepped: Stepped) -> None:
    before, after, step = stepped.before, stepped.after, stepped.step
    assert step.revoked_roa is not None and step.rolled_ca is None
    assert set(before) - set(after) == set(step.removed) == {step.revoked_roa}
    assert set(after) - set(before) == {step.added_roa}
    changed = {rel for rel in after if rel in before and after[rel] != before[rel]}
    assert changed | {step.added_roa} == set(step.written)
    # Every CA (and the TA) re-issued its CRL and manifest; the rest did not move.
    points = {rel.split("/")[0] for rel in after if "/" in rel}
    assert changed == {f"{p}/{p}.{ext}" for p in points for ext in ("crl", "mft")}
    assert after["ta.cer"] == before["ta.cer"]


def test_every_object_reads_and_every_manifest_is_exact(stepped: Stepped) -> None:
    numbers = check_consistent(stepped.bed.out_dir, LATER)
    assert set(numbers.values()) == {2}  # RFC 9286 §4.2.1: increased
    repo = stepped.bed.repository
    for rel in stepped.step.written:
        obj = read(repo, rel)
        if isinstance(obj, SignedObject):
            assert obj.signing_time == LATER, rel  # RFC 9589
            assert obj.not_before == LATER - timedelta(hours=1), rel
            assert obj.not_after == LATER + timedelta(days=7), rel
        else:
            assert isinstance(obj, Crl)
            assert obj.this_update == LATER - timedelta(hours=1)
            assert obj.next_update == LATER + timedelta(days=7)


def test_new_signed_objects_have_fresh_ee_certificates(stepped: Stepped) -> None:
    old_serials = set()
    for rel, (data, _mtime) in stepped.before.items():
        obj = read_object(data, name=Path(rel).name)
        if isinstance(obj, SignedObject):
            old_serials.add(obj.ee_certificate.serial)
    new_serials = []
    for rel in stepped.step.written:
        obj = read(stepped.bed.repository, rel)
        if isinstance(obj, SignedObject):
            new_serials.append(obj.ee_certificate.serial)
    assert len(new_serials) == 5  # 4 manifests and the new ROA
    assert len(set(new_serials)) == 5 and not set(new_serials) & old_serials


def test_revoked_roa_is_on_the_crl_and_gone(stepped: Stepped) -> None:
    step, repo = stepped.step, stepped.bed.repository
    assert step.revoked_roa is not None and step.revoked_serial is not None
    assert not (repo / step.revoked_roa).exists()
    old = read_object(stepped.before[step.revoked_roa][0], name="x.roa")
    assert isinstance(old, SignedObject)
    assert old.ee_certificate.serial == step.revoked_serial
    point = step.revoked_roa.split("/")[0]
    crl = crl_of(repo, f"{point}/{point}.crl")
    assert step.revoked_serial in crl.revoked_serials
    # The replaced manifest's EE certificate is revoked too, in every CA.
    for p in ("ta", "ca-1", "ca-2", "ca-3"):
        old_mft = read_object(stepped.before[f"{p}/{p}.mft"][0], name=f"{p}.mft")
        assert isinstance(old_mft, SignedObject)
        assert old_mft.ee_certificate.serial in crl_of(repo, f"{p}/{p}.crl").revoked_serials
    _ee, mft = manifest_of(repo, f"{point}/{point}.mft")
    assert Path(step.revoked_roa).name not in {e.file for e in mft.files}


def test_expected_vrps_lose_one_roa_and_gain_one(stepped: Stepped) -> None:
    step, bed = stepped.step, stepped.bed
    assert step.revoked_roa is not None

    def vrps_of(data: bytes) -> set[Vrp]:
        obj = read_object(data, name="x.roa")
        assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
        return {
            Vrp(obj.content.as_id, str(p.prefix), p.effective_max_length)
            for p in obj.content.prefixes
        }

    gone = vrps_of(stepped.before[step.revoked_roa][0])
    new = vrps_of(stepped.after[step.added_roa][0])
    assert gone and new and not new & bed.vrps
    assert step.vrps == (bed.vrps - gone) | new == file_vrps(bed.out_dir)
    # expires is still the TA certificate's end: nothing above the new objects moved.
    rows = (bed.out_dir / "expected-vrps.csv").read_text().splitlines()[1:]
    assert {r.rsplit(",", 1)[1] for r in rows} == {str(int(bed.not_after.timestamp()))}


def test_several_steps_with_a_key_roll_stay_consistent(tmp_path: Path) -> None:
    bed = generate(options(tmp_path, cas=3, depth=2, roas_per_ca=2, seed=3))
    repo = bed.repository
    numbers = check_consistent(bed.out_dir, NOW)
    vrps = set(bed.vrps)
    when = NOW
    for i in range(4):
        when += timedelta(minutes=30)
        roll = i == 1
        state = load_state(bed.out_dir)
        old_certs = {rel: read(repo, rel) for rel in snapshot(repo) if rel.endswith(".cer")}
        step = advance(bed.out_dir, now=when, roll_key=roll)
        new_numbers = check_consistent(bed.out_dir, when)
        assert all(new_numbers[k] > numbers[k] for k in numbers), (numbers, new_numbers)
        numbers = new_numbers
        assert step.generation == i + 1
        assert len(step.vrps ^ vrps) >= 2 and step.vrps == file_vrps(bed.out_dir)
        vrps = set(step.vrps)
        if not roll:
            assert step.rolled_ca is None
            continue
        # RFC 6489: new key, new certificate (new serial) at the same URI, old one revoked.
        name = step.rolled_ca
        assert name is not None
        parent = state.ca(name).parent
        assert parent is not None
        cert_rel = f"{parent}/{name}.cer"
        old, new = old_certs[cert_rel], read(repo, cert_rel)
        assert isinstance(old, Certificate) and isinstance(new, Certificate)
        assert new.serial != old.serial
        assert new.subject_key_identifier != old.subject_key_identifier
        assert old.serial in crl_of(repo, f"{parent}/{parent}.crl").revoked_serials
        # Everything in the rolled CA's point is signed by the new key now.
        for path in (repo / name).iterdir():
            obj = read(repo, f"{name}/{path.name}")
            issued = obj.ee_certificate if isinstance(obj, SignedObject) else obj
            aki = issued.authority_key_identifier
            assert aki == new.subject_key_identifier, path.name
            assert f"{name}/{path.name}" in step.written
        assert not (set(old_certs) - set(snapshot(repo)))
        # The new key's manifest and CRL have new names; the old key's are withdrawn.
        stem = load_state(bed.out_dir).ca(name).stem
        assert stem == f"{name}-k{i + 1}" and new.rpki_manifest == (f"{BASE}{name}/{stem}.mft",)
        assert set(step.removed) - {step.revoked_roa} == {
            f"{name}/{name}.mft",
            f"{name}/{name}.crl",
        }
        assert {f"{name}/{stem}.mft", f"{name}/{stem}.crl"} <= set(step.written)


def test_same_seed_same_choices(tmp_path: Path) -> None:
    small = {"cas": 2, "depth": 1, "roas_per_ca": 2}
    a = generate(options(tmp_path / "a", **small))
    b = generate(options(tmp_path / "b", **small))
    sa = advance(a.out_dir, now=LATER, seed=5, roll_key=True)
    sb = advance(b.out_dir, now=LATER, seed=5, roll_key=True)
    assert (sa.added_roa, sa.revoked_roa, sa.rolled_ca) == (
        sb.added_roa,
        sb.revoked_roa,
        sb.rolled_ca,
    )
    assert sa.vrps == sb.vrps and sa.written == sb.written
    for name in ("expected-vrps.csv", "expected-vrps.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as missing:
        advance(tmp_path / "none")
    assert missing.value.reason is Reason.STATE_MISSING
    bed = generate(options(tmp_path / "tb", cas=1, depth=1, roas_per_ca=1))
    with pytest.raises(ConfigError) as back:
        advance(bed.out_dir, now=NOW)  # time must move forward
    assert back.value.reason is Reason.USAGE and "forward" in str(back.value)
    with pytest.raises(ConfigError) as late:
        advance(bed.out_dir, now=NOW + timedelta(days=8))
    assert late.value.reason is Reason.USAGE and "expires" in str(late.value)
    state = bed.out_dir / "testbed-state.json"
    original = state.read_text()
    state.write_text(original.replace('"file": "roa-1-', '"file": "../roa-1-'))
    with pytest.raises(StorageError) as traversal:  # the state names files: plain names only
        advance(bed.out_dir, now=LATER)
    assert traversal.value.reason is Reason.STATE_CORRUPT and "plain" in str(traversal.value)
    state.write_text(original.replace('"version": 1', '"version": 99'))
    with pytest.raises(StorageError) as incompatible:
        advance(bed.out_dir, now=LATER)
    assert incompatible.value.reason is Reason.STATE_INCOMPATIBLE
    state.write_text("{}")
    with pytest.raises(StorageError) as corrupt:
        advance(bed.out_dir, now=LATER)
    assert corrupt.value.reason is Reason.STATE_INCOMPATIBLE
    state.write_text('{"format": "rpkirepo-testbed-state", "version": 1}')
    with pytest.raises(StorageError) as corrupt:
        advance(bed.out_dir, now=LATER)
    assert corrupt.value.reason is Reason.STATE_CORRUPT


def test_cli(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "rpkirepo", "testbed", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    out = str(tmp_path / "tb")
    assert run(out, "--cas", "2", "--roas-per-ca", "1").returncode == 0
    first = run("advance", out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("testbed advance: step 1, "), first.stdout
    second = run("advance", out, "--roll-key", "--seed", "4")
    assert second.returncode == 0, second.stderr
    assert "step 2, " in second.stdout and ", key rolled: ca-" in second.stdout, second.stdout
    for argv, words in [
        (("advance", out, "--cas", "4"), "not --cas"),
        (("advance",), "needs OUT_DIR"),
        ((str(tmp_path / "other"), "--roll-key"), "--roll-key needs"),
        (("forward", out), "invalid choice"),
    ]:
        proc = run(*argv)
        assert proc.returncode == 2 and words in proc.stderr, (argv, proc.stderr)
    missing = run("advance", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "[state-missing]" in missing.stderr


# ---- end to end: rpki-client follows the delta ------------------------------------------------

EXPECTED_STDERR = [  # as in test_peer_rpki_client.py
    r"rpki-client: \S+: pulling from \S+",
    r"rpki-client: \S+: pulling from network",
    r"rpki-client: \S+: downloading snapshot",
    r"rpki-client: \S+: downloading \d+ deltas?",
    r"rpki-client: \S+: (repository|notification file) not modified",
    r"rpki-client: \S+: loaded from network",
    r"rpki-client: all files parsed: generating output",
]


@pytest.fixture
def peer_root() -> Iterator[Path]:
    with peer_scratch("rpkirepo-advance-", "rpki-client") as path:
        yield path


def cli(*args: str) -> str:
    return run_rpkirepo(*args).stdout


def expected_rows(testbed: Path) -> set[str]:
    return set((testbed / "expected-vrps.csv").read_text().splitlines()[1:])


@pytest.mark.peer
def test_rpki_client_follows_the_advance_by_one_delta(peer_root: Path) -> None:
    """generate → publish → rpki-client (snapshot); then twice (plain, then --roll-key)
    advance → publish → rpki-client on the same cache: one delta, exactly the new VRPs, no
    warning.  Beside it, rpki-client over rsync only (-R), on a cache of its own, validates each
    state too, and the rsync daemon sends it only files the step changed.

    The testbed names its own ports (free ones, not 3000 and 873), so this test can run beside
    other peer tests."""
    for peer in ("nginx", "rsync", "rpki-client", "unshare"):
        require_peer(peer)
    loopback = ("127.0.0.1", "::1") if ipv6_loopback_available() else ("127.0.0.1",)
    https_port, rsync_port = free_port(loopback), free_port()
    rsync_base = f"rsync://localhost:{rsync_port}/repo/"
    rrdp_base = f"https://localhost:{https_port}/rrdp/"
    notify_uri = rrdp_base + "notification.xml"
    testbed = peer_root / "testbed"
    cli(
        "testbed", str(testbed), "--cas", "3", "--depth", "2", "--roas-per-ca", "3",
        "--seed", "11", "--rsync-base", rsync_base, "--rrdp-base", rrdp_base,
        "--ta-uri", f"https://localhost:{https_port}/ta/ta.cer", "--ta-uri", rsync_base + "ta.cer",
    )  # fmt: skip
    out = public_dir(peer_root / "publish")

    def publish() -> None:
        cli(
            "publish", str(testbed / "repository"),
            "--rsync-base", rsync_base, "--https-base", rrdp_base,
            "--state-dir", str(out / "state"), "--rrdp-dir", str(out / "rrdp"),
            "--rsync-dir", str(out / "rsync"),
        )  # fmt: skip

    publish()
    with serve_repository(
        peer_root, out / "rrdp", out / "rsync", testbed / "ta.cer", https_port, rsync_port
    ) as served:
        nginx, rsyncd, tls = served.nginx, served.rsync, served.tls

        def validate(fetch: str | None) -> list[str]:
            """rpki-client over RRDP (``fetch``: what it must say it downloads) or, for None,
            over rsync only; returns the files the rsync daemon sent meanwhile."""
            mark, rsync_mark = nginx.mark(), rsyncd.mark()
            result = run_rpki_client(
                peer_root / f"rpki-client-{'rrdp' if fetch else 'rsync'}",  # same cache each time
                testbed / "ta.tal",
                binary=require_peer("rpki-client"),
                trust=tls.ca_cert,
                hosts={"localhost": "127.0.0.1"},
                rsync_only=fetch is None,
            )
            ctx = f"{result.describe()}\n{nginx.logs()}\n{rsyncd.log_text(rsync_mark)}"
            assert result.returncode == 0, ctx
            if fetch is not None:
                assert f"rpki-client: {notify_uri}: {fetch}" in result.stderr, ctx
                fetched = [str(e["uri"]) for e in nginx.access_entries(mark)]
                kind = "snapshot.xml" if "snapshot" in fetch else "delta.xml"
                assert [u for u in fetched if u.endswith(".xml")][-1].endswith(kind), ctx
            else:
                assert f"pulling from {rsync_base}" in result.stderr, ctx
                assert nginx.access_entries(mark) == [], ctx
            warnings = unexpected_lines(result.stderr, EXPECTED_STDERR)
            assert warnings == [], "rpki-client warned:\n" + "\n".join(warnings) + "\n" + ctx
            meta = result.metadata()
            for key in ("invalidcertificates", "failedmanifests", "stalemanifests"):
                assert meta.get(key) == 0, (key, ctx)
            for key in ("failedroas", "invalidroas", "invalidaspas"):
                assert meta.get(key) == 0, (key, ctx)
            counts = {k: meta.get(k) for k in ("certificates", "manifests", "crls", "roas")}
            assert counts == {"certificates": 4, "manifests": 4, "crls": 4, "roas": 9}, ctx
            got = set((result.outdir / "csv").read_text().splitlines()[1:])
            want = expected_rows(testbed)
            assert got == want, f"missing {want - got}\nunexpected {got - want}\n{ctx}"
            print(f"\n{result.stderr}")
            return rsyncd.sent_files("repo", rsync_mark)

        validate("downloading snapshot")
        validate(None)
        for roll in ([], ["--roll-key"]):
            before = expected_rows(testbed)
            files = snapshot(testbed / "repository")
            said = cli("testbed", "advance", str(testbed), *roll)
            assert (", key rolled: ca-" in said) == bool(roll), said
            assert expected_rows(testbed) != before
            after = snapshot(testbed / "repository")
            changed = {rel for rel in after if files.get(rel) != after[rel]}
            publish()
            validate("downloading 1 deltas")
            sent = validate(None)
            # rpki-client fetches the TA certificate anew every run, the rest only if changed.
            assert changed and set(sent) - {"ta.cer"} <= changed, (sent, changed)
