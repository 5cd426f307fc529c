"""The RFC 9589 file-mtime rule of the fast path (rrdp-checklist §4), on real objects.

.roa .mft .asa .gbr .tak .spl .sig -> CMS signing-time, else the EE certificate's notBefore;
.cer -> notBefore; .crl -> thisUpdate; anything unusable -> source NONE, seconds -1, a reason.
"""

from __future__ import annotations

import base64
import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.limits import Limits
from rpkirepo.objects import (
    ObjectKind,
    ObjectTime,
    SignedObject,
    TimeSource,
    detect_kind,
    fast_signing_time,
    mtime_of,
    read_object,
)

SIGNED_EXTENSIONS = (".roa", ".mft", ".asa", ".gbr", ".tak", ".spl", ".sig")
BER_FILES = (
    "objects/roa/rpki-validator-3/g11HohjaKcA9vAJV9LrYPq1bKZQ.roa",  # 44 KB, 3,870 prefixes
    "objects/roa/rrdp-ripe-prod-2017-ber/phQ5JfV8llJoaGylcrBcVa7oPfI.roa",
    "objects/mft/rpki-rs/ta.mft",
    "objects/mft/rpki-monitoring/Q8uCW6eAw7tnl2QxNmQTf50fxAg.mft",
    "objects/roa/rpki-rs/example-ripe.roa",
)


def _posix(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def rows(corpus_dir: Path) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    def tsv(name: str) -> dict[str, dict[str, str]]:
        with (corpus_dir / name).open(newline="") as f:
            return {r["path"]: r for r in csv.DictReader(f, delimiter="\t")}

    index, details = tsv("INDEX.tsv"), tsv("DETAILS.tsv")
    return {p: (index[p], details[p]) for p in index if p.startswith("objects/")}


def _read(corpus_dir: Path, rel: str) -> bytes:
    return (corpus_dir / rel).read_bytes()


# --- the rule, per extension, on every real object ---------------------------------------------
def test_signed_objects_take_their_signing_time(
    corpus_dir: Path, rows: dict[str, tuple[dict[str, str], dict[str, str]]]
) -> None:
    seen: set[str] = set()
    for rel, (index, details) in rows.items():
        if not rel.endswith(SIGNED_EXTENSIONS) or index["signing_time"] == "-":
            continue
        t = mtime_of(_read(corpus_dir, rel), rel)
        if "BASE64" in details["notes"] or "garbage" in details["notes"]:
            assert t.source is TimeSource.NONE, rel  # values in INDEX are from decoded bytes
            continue
        assert t == ObjectTime(_posix(index["signing_time"]), TimeSource.SIGNING_TIME), rel
        seen.add(rel.rsplit(".", 1)[1])
    assert seen == {ext[1:] for ext in SIGNED_EXTENSIONS}


def test_signed_objects_without_signing_time_fall_back_to_ee_not_before(
    corpus_dir: Path, rows: dict[str, tuple[dict[str, str], dict[str, str]]]
) -> None:
    fallbacks = 0
    for rel, (index, details) in rows.items():
        if (
            index["econtent_type"] == "-"
            or index["signing_time"] != "-"
            or "BASE64" in details["notes"]
        ):
            continue
        t = mtime_of(_read(corpus_dir, rel), rel)
        assert t.source is TimeSource.EE_NOT_BEFORE, rel
        assert t.reason is Reason.OBJECT_NO_SIGNING_TIME
        assert t.seconds == _posix(details["not_before"]), rel
        fallbacks += 1
    # aspa-bm, 4 old-profile ASPAs, 2 RSCs, 3 rpki-rs ROAs (corpus README).
    assert fallbacks == 10


def test_certificates_take_not_before_and_crls_this_update(
    corpus_dir: Path, rows: dict[str, tuple[dict[str, str], dict[str, str]]]
) -> None:
    counts = {"cer": 0, "crl": 0}
    for rel, (_, details) in rows.items():
        folder = rel.split("/")[1]  # objects/<type>/...; one BPKI certificate is a .der file
        if folder not in counts or details["not_before"] == "-":
            continue
        t = mtime_of(_read(corpus_dir, rel), rel)
        expected = TimeSource.CERT_NOT_BEFORE if folder == "cer" else TimeSource.CRL_THIS_UPDATE
        # DETAILS not_before is notBefore for certificates and thisUpdate for CRLs.
        assert t == ObjectTime(_posix(details["not_before"]), expected), rel
        counts[folder] += 1
    assert counts == {"cer": 109 - 1, "crl": 92}  # all but the empty file


@pytest.mark.parametrize("rel", BER_FILES)
def test_ber_objects(corpus_dir: Path, rel: str) -> None:
    data = _read(corpus_dir, rel)
    assert data[1] == 0x80, "expected an indefinite-length outer SEQUENCE"
    t = mtime_of(data, rel)
    assert t.source is TimeSource.SIGNING_TIME and t.reason is None
    obj = read_object(data, name=rel)
    assert isinstance(obj, SignedObject) and obj.signing_time is not None
    assert t.seconds == int(obj.signing_time.timestamp()) == fast_signing_time(data)


def test_every_corpus_file_gives_a_time_or_none_with_a_reason(corpus_dir: Path) -> None:
    for top in ("objects", "conformance/bbn"):
        for path in (corpus_dir / top).rglob("*"):
            if path.is_file():
                t = mtime_of(path.read_bytes(), path.name)
                assert isinstance(t, ObjectTime)
                assert (t.source is TimeSource.NONE) == (t.seconds == -1)
                assert t.source is not TimeSource.NONE or t.reason is not None


# --- fallbacks and refusals -----------------------------------------------------------------------
def test_garbage_empty_and_text(corpus_dir: Path) -> None:
    assert mtime_of(b"", "x.roa") == ObjectTime(-1, TimeSource.NONE, Reason.OBJECT_EMPTY)
    assert mtime_of(b"\xff" * 64, "x.roa").reason is Reason.OBJECT_MALFORMED
    assert mtime_of(b"hello, world\n", "x.roa").reason is Reason.OBJECT_TEXT
    garbage = _read(corpus_dir, "objects/asa/rrdp-tools/AS203635.asa")
    assert mtime_of(garbage, "AS203635.asa").source is TimeSource.NONE
    # ... and the same bytes without the 32-byte prefix are a good ASPA.
    assert mtime_of(garbage[32:], "AS203635.asa").source is TimeSource.SIGNING_TIME
    text = _read(
        corpus_dir, "objects/gbr/rpki-monitoring/corrupted_5GzpWH5N-vMm_nh7A93VwzaW4zk.gbr"
    )
    assert mtime_of(text, "x.gbr").reason is Reason.OBJECT_TEXT
    good = mtime_of(base64.b64decode(text), "x.gbr")
    assert good.source is TimeSource.SIGNING_TIME
    assert good.seconds == _posix("2021-02-23T18:57:17Z")  # INDEX, from the decoded bytes


def test_truncations_and_trailing_bytes(corpus_dir: Path) -> None:
    for rel in (*BER_FILES[:2], "objects/roa/rpki-rs/maxlen-overflow.roa"):
        data = _read(corpus_dir, rel)
        assert mtime_of(data[:1], rel).reason is Reason.OBJECT_TEXT  # b"0" is text
        for cut in (2, 10, len(data) // 2, len(data) - 1):
            t = mtime_of(data[:cut], rel)
            assert t.source is TimeSource.NONE and t.reason is Reason.OBJECT_MALFORMED
        t = mtime_of(data + b"\x00", rel)
        assert t == ObjectTime(-1, TimeSource.NONE, Reason.OBJECT_TRAILING_DATA)


def test_too_large(corpus_dir: Path) -> None:
    data = _read(corpus_dir, BER_FILES[0])
    small = Limits(max_object_size=1000)
    assert mtime_of(data, "x.roa", limits=small).reason is Reason.OBJECT_TOO_LARGE
    with pytest.raises(LimitExceeded) as info:
        read_object(data, limits=small)
    assert info.value.reason is Reason.OBJECT_TOO_LARGE
    assert info.value.context["limit"] == "max_object_size"


def test_ambiguous_signing_time_falls_back(corpus_dir: Path) -> None:
    for name in ("badCMSSigInfoAttrs2SigTime.roa", "badCMSSigInfoAttrsSigTime2Val.roa"):
        data = _read(corpus_dir, "conformance/bbn/root/" + name)
        t = mtime_of(data, name)
        assert t.source is TimeSource.EE_NOT_BEFORE and t.reason is Reason.OBJECT_BAD_TIME
        with pytest.raises(RemoteProtocolError) as info:
            fast_signing_time(data)
        assert info.value.reason is Reason.OBJECT_BAD_TIME


def _with_signing_time(data: bytes, utc_time: bytes) -> bytes:
    """Replace the 13-byte UTCTime value of the signing-time attribute (same length)."""
    marker = bytes.fromhex("06092a864886f70d010905310f170d")  # OID signing-time, SET, UTCTime
    at = data.index(marker) + len(marker)
    assert len(utc_time) == 13
    return data[:at] + utc_time + data[at + 13 :]


def test_signing_time_before_1970_or_unparseable_falls_back(corpus_dir: Path) -> None:
    rel = "objects/roa/rpki-commons/nI2bsx18I5mlex8lBpY0WSJUYio.roa"
    data = _read(corpus_dir, rel)
    ee = read_object(data)
    assert isinstance(ee, SignedObject)
    not_before = int(ee.not_before.timestamp())
    early = _with_signing_time(data, b"690101000000Z")  # 1969: not an RPKI time
    assert fast_signing_time(early) == -365 * 86400
    assert mtime_of(early, rel) == ObjectTime(
        not_before, TimeSource.EE_NOT_BEFORE, Reason.OBJECT_BAD_TIME
    )
    for bad in (b"991301000000Z", b"990101000060Z", b"9901010000+0Z", b"990101000000X"):
        broken = _with_signing_time(data, bad)
        assert mtime_of(broken, rel) == ObjectTime(
            not_before, TimeSource.EE_NOT_BEFORE, Reason.OBJECT_BAD_TIME
        ), bad


# --- extension and content disagree, or the extension is unknown ----------------------------------
def test_content_decides_when_the_extension_disagrees(corpus_dir: Path) -> None:
    roa = _read(corpus_dir, "objects/roa/rpki-commons/nI2bsx18I5mlex8lBpY0WSJUYio.roa")
    crl = _read(corpus_dir, "objects/crl/rrdp-ripe-prod-2019/lzkCc7Myo8KSctQvclH_mRliuNQ.crl")
    cer = _read(corpus_dir, "objects/cer/rrdp-ripe-prod-2019/blWfeF067I0zFjvMPLVAOPkX1hk.cer")
    right = mtime_of(roa, "a.roa")
    assert right.source is TimeSource.SIGNING_TIME and right.reason is None
    for wrong in ("a.cer", "a.mft", "dir/a.crl", "A.MFT"):
        t = mtime_of(roa, wrong)
        assert (t.seconds, t.source) == (right.seconds, right.source)
        assert t.reason is Reason.OBJECT_BAD_CONTENT_TYPE
    assert mtime_of(crl, "x.cer").source is TimeSource.CRL_THIS_UPDATE
    assert mtime_of(crl, "x.cer").reason is Reason.OBJECT_BAD_CONTENT_TYPE
    assert mtime_of(cer, "x.crl").source is TimeSource.CERT_NOT_BEFORE
    assert mtime_of(cer, "x.roa").reason is Reason.OBJECT_BAD_CONTENT_TYPE
    # Unknown or missing extensions claim nothing: the rule for the content, no reason.
    for name in ("a.der", "a", "a.ROA", ".roa", "a.txt"):
        t = mtime_of(roa, name)
        assert (t.seconds, t.source, t.reason) == (right.seconds, right.source, None), name


def test_protocol_messages_and_geofeeds_are_signed_objects_too(corpus_dir: Path) -> None:
    msg = "objects/cms-protocol/rpki-rs/issue.der"
    t = mtime_of(_read(corpus_dir, msg), msg)
    assert t == ObjectTime(_posix("2011-07-01T04:09:02Z"), TimeSource.SIGNING_TIME)
    feed = "objects/geofeed/rpki-client-regress-history/geofeed.csv"
    t = mtime_of(_read(corpus_dir, feed), feed)
    assert t == ObjectTime(_posix("2025-11-17T13:01:36Z"), TimeSource.SIGNING_TIME)


def test_ccr_is_recognised_but_has_no_mtime(corpus_dir: Path) -> None:
    rel = "objects/ccr/rpki-commons/draft-ietf-sidrops-rpki-ccr.ccr"
    der = base64.b64decode(_read(corpus_dir, rel))
    assert detect_kind(der, name="x.ccr") is ObjectKind.CCR
    assert mtime_of(der, "x.ccr") == ObjectTime(-1, TimeSource.NONE, Reason.OBJECT_NOT_SIGNED_DATA)
    with pytest.raises(RemoteProtocolError) as info:
        read_object(der)
    assert info.value.reason is Reason.OBJECT_NOT_SIGNED_DATA
    with pytest.raises(RemoteProtocolError):
        detect_kind(der, name="x.roa")


def test_object_time_invariants() -> None:
    with pytest.raises(ValueError):
        ObjectTime(5, TimeSource.NONE, Reason.OBJECT_MALFORMED)
    with pytest.raises(ValueError):
        ObjectTime(-1, TimeSource.NONE)
    with pytest.raises(ValueError):
        ObjectTime(-5, TimeSource.SIGNING_TIME)


def test_mtime_of_never_raises_even_on_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-resort handler: a bug below mtime_of still gives NONE, not an exception."""
    from rpkirepo.objects import _fast

    def boom(*args: object) -> ObjectTime:
        raise IndexError("simulated bug")

    monkeypatch.setattr(_fast, "_mtime", boom)
    assert mtime_of(b"0\x00", "x.roa") == ObjectTime(-1, TimeSource.NONE, Reason.OBJECT_MALFORMED)

    def own(*args: object) -> ObjectTime:
        raise RpkiRepoError(Reason.OBJECT_UNKNOWN_TYPE)

    monkeypatch.setattr(_fast, "_mtime", own)
    assert mtime_of(b"0\x00", "x.roa").reason is Reason.OBJECT_UNKNOWN_TYPE
