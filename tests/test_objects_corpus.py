"""Every object file of the shared corpus through both readers, cross-checked against the corpus'
own analysis (INDEX.tsv, DETAILS.tsv, PROVENANCE.tsv).

Files: everything under ``objects/`` and ``conformance/bbn/`` except the BBN README and the RSC
``.txt`` payload files.  Each file either reads or is refused with an RpkiRepoError; the refused
ones are listed in :data:`REFUSED` with the reason and why, and the test fails if the set of
refused files or a reason changes.  Values are compared with the corpus' columns for every file
that reads; the few places where our answer differs on purpose are in :data:`KIND_EXCEPTIONS`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rpkirepo.errors import Reason, RpkiRepoError
from rpkirepo.objects import (
    ECONTENT_KINDS,
    Certificate,
    Crl,
    Manifest,
    ObjectKind,
    RouteOriginAttestation,
    RpkiObject,
    SignedObject,
    detect_kind,
    fast_signing_time,
    read_object,
    read_signing_time,
)
from rpkirepo.objects._time import to_datetime

M = Reason.OBJECT_MALFORMED
BBN = "conformance/bbn/root/"
OLD_ASPA = "ASPA of a profile before -15 (no version, providers as SEQUENCE with AFI)"

#: Every corpus file read_object refuses (with its name given), the reason, and why.
REFUSED: dict[str, tuple[Reason, str]] = {
    # --- framing (corpus README "Broken framing") ---
    "objects/cer/rpki-validator-3/empty-file.cer": (Reason.OBJECT_EMPTY, "0 bytes"),
    "objects/asa/rrdp-tools/AS203635.asa": (M, "32 bytes of garbage before the DER object"),
    "objects/gbr/rpki-monitoring/corrupted_5GzpWH5N-vMm_nh7A93VwzaW4zk.gbr": (
        Reason.OBJECT_TEXT,
        "base64 text, not DER",
    ),
    "objects/ccr/rpki-commons/draft-ietf-sidrops-rpki-ccr.ccr": (Reason.OBJECT_TEXT, "base64"),
    "objects/ccr/rpki-commons-history/draft-ietf-sidrops-rpki-ccr-03.ccr": (
        Reason.OBJECT_TEXT,
        "base64",
    ),
    "objects/cms-protocol/rpki-commons/dtag-inbound-2.der": (Reason.OBJECT_TEXT, "base64"),
    "objects/cms-protocol/rpki-commons/dtag-outbound-1.der": (Reason.OBJECT_TEXT, "base64"),
    # --- ASPA profile: only the current profile (version 1, providers SEQUENCE OF ASID) ---
    **{
        f"objects/asa/rpki-client-regress-history/{h}.asa": (M, OLD_ASPA)
        for h in (
            "2338bd30cba1ff30fe3cf930824f39b45569d458de356729cb0121400ee3616a",
            "5c67c85c9fbdf4daea0034480c2c3da10ef241738cb4f5a16e6cf60ec812713d",
            "63bbc4571294a06f5e7533166179bafcb0252e0484708e6d45924e1e479c8636",
            "c27f17d94c8a2f9e4c6d07e69f58c33c48c28c77ff602040e02bb19f6ffd3dfd",
            "d6915eb78c75cab0bc46b48568232ec971819eab2b0009060c463f636bd7c204",
        )
    },
    "objects/asa/rpki-prover/aspa.1.asa": (M, OLD_ASPA),
    "objects/asa/rpki-rs/aspa-bm.asa": (M, OLD_ASPA),
    "objects/asa/rpki-commons/BAD-profile-13-AS211321-profile-13.asa": (M, OLD_ASPA),
    "objects/asa/rpki-commons/BAD-profile-15-APNIC-rpki-aspa-demo-AS1000.asa": (
        M,
        "ASPA without the (required) version",
    ),
    "objects/asa/rpki-commons/BAD-profile-15-rpki-commons-propertytest-sample-implicit-tag.asa": (
        M,
        "ASPA version with an implicit instead of an explicit tag",
    ),
    # --- ROA resources (RFC 3779 §2.2.3.8, RFC 9582 §4.3.3) ---
    "objects/roa/rpki-rs/maxlen-overflow.roa": (Reason.OBJECT_BAD_RESOURCE, "maxLength 124, /24"),
    "objects/roa/rpki-rs/maxlen-underflow.roa": (Reason.OBJECT_BAD_RESOURCE, "maxLength 2, /24"),
    "objects/roa/rpki-rs/prefix-len-overflow.roa": (
        Reason.OBJECT_BAD_RESOURCE,
        "a 124-bit IPv4 prefix",
    ),
    # --- BBN conformance: CMS envelope (RFC 6488 §2.1, RFC 5652) ---
    BBN + "badCMS2Certs.roa": (M, "two certificates (RFC 6488 §2.1.4)"),
    BBN + "badCMSNoCerts.roa": (M, "no certificate (RFC 6488 §2.1.4)"),
    BBN + "badCMS2SigInfo.roa": (M, "two SignerInfos (RFC 6488 §2.1)"),
    BBN + "badCMSNoSigInfo.roa": (M, "no SignerInfo"),
    BBN + "badCMSSigInfo2Sig.roa": (M, "a SignerInfo with two signatures (extra field)"),
    BBN + "badCMSSigInfoNoHashAlg.roa": (M, "SignerInfo without digestAlgorithm"),
    BBN + "badCMSSigInfoNoSid.roa": (M, "SignerInfo without sid"),
    BBN + "badCMSSigInfoNoSig.roa": (M, "SignerInfo without signature"),
    BBN + "badCMSContentType.roa": (Reason.OBJECT_NOT_SIGNED_DATA, "contentType id-data"),
    BBN + "badCMSSigInfoAttrs2SigTime.roa": (Reason.OBJECT_BAD_TIME, "two signing-times"),
    BBN + "badCMSSigInfoAttrsSigTime0Val.roa": (Reason.OBJECT_BAD_TIME, "no value"),
    BBN + "badCMSSigInfoAttrsSigTime2Val.roa": (Reason.OBJECT_BAD_TIME, "two values"),
    # --- BBN: the name says one type, the eContentType another ---
    BBN + "badROAWrongType.roa": (Reason.OBJECT_BAD_CONTENT_TYPE, "eContentType 2.999.42"),
    BBN + "badGBRWrongOID.gbr": (Reason.OBJECT_BAD_CONTENT_TYPE, "eContentType 2.999.42"),
    BBN + "MFTWrongType/badMFTWrongType.mft": (Reason.OBJECT_BAD_CONTENT_TYPE, "a ROA in .mft"),
    # --- BBN: repeated extensions (RFC 5280 §4.2) ---
    **{
        BBN + f"badCert{x}.cer": (M, "repeated extension (RFC 5280 §4.2)")
        for x in (
            *(f"2{e}" for e in ("AKI", "ASNum", "BasicConstr", "CRLDP", "Cpol", "IPAddr")),
            *(f"2{e}" for e in ("KeyUsage", "SKI")),
            "AIA2x",
            "SIA2x",
        )
    },
    BBN + "CRL2CRLNums/badCRL2CRLNums.crl": (M, "two cRLNumber extensions"),
    # --- BBN: manifest eContent (RFC 9286 §4.2) ---
    **{
        BBN + f"MFT{x}/badMFT{x}.mft": (M, "manifest eContent")
        for x in (
            "FileHashLong",  # a 33-byte hash
            "FileHashShort",  # a 31-byte hash
            "FileNotIA5",  # file name not an IA5String
            "HashAlg",  # fileHashAlg not SHA-256
            "HashAlgSameLength",
            "HashOctetStr",  # hash an OCTET STRING
            "NegNum",  # manifestNumber -128
            "NextUpdUTC",  # UTCTime where GeneralizedTime is required
            "ThisUpdUTC",
            "NoNum",  # no manifestNumber
            "Version0",  # version 0 encoded explicitly but primitive
            "Version1",  # eContent length overrun
        )
    },
    # --- BBN: ROA eContent (RFC 9582) ---
    **{
        BBN + f"badROA{x}.roa": (Reason.OBJECT_BAD_RESOURCE, "ROA resources")
        for x in (
            "ASIDLarge",  # asID >= 2^32
            "ASIDSmall",  # negative asID
            "Family",  # AFI 3
            "FamilyLth",  # AFI with SAFI
            "IPv4MaxLthLong",
            "IPv4MaxLthShort",
            "IPv4PrefixLong",  # a 33-bit IPv4 prefix
            "IPv6MaxLthLong",
            "IPv6MaxLthShort",
            "IPv6PrefixLong",  # a 129-bit IPv6 prefix
        )
    },
    **{
        BBN + f"badROA{x}.roa": (M, "ROA version not 0 / not explicit")
        for x in ("VersionV1Explicit", "VersionV1ExplicitBadSig", "VersionV2")
    },
}

#: Our kind differs from DETAILS.tsv's summary on purpose.
KIND_EXCEPTIONS: dict[str, tuple[ObjectKind, str]] = {
    # DETAILS calls it self-signed (its signature verifies with its own key), but its AKI does not
    # match its SKI, so by RFC 6487 §4.8.3 it is not a self-signed (TA) certificate for us.
    "conformance/bbn/badRootBadAKI.cer": (ObjectKind.CA_CERTIFICATE, "AKI != SKI"),
}

#: Files we read but for which DETAILS.tsv has no values: the corpus' analysis tool failed on them
#: ("PARSE ERROR ... 266 bytes requested but only 250 available" and "IndexError"), in the EE
#: certificate's public key or an empty attribute we do not decode.
DETAILS_UNPARSED: frozenset[str] = frozenset(
    {
        BBN + "MFTUpdCrossed/badMFTUpdCrossed.mft",
        BBN + "badCMSSigInfoAttrsContType0Val.roa",
        BBN + "badCMSSigInfoAttrsMsgDigest0Val.roa",
    }
)

#: INDEX.tsv ``type`` for each kind.
CORPUS_TYPE: dict[ObjectKind, str] = {
    ObjectKind.TA_CERTIFICATE: "cer",
    ObjectKind.CA_CERTIFICATE: "cer",
    ObjectKind.EE_CERTIFICATE: "cer",
    ObjectKind.ROUTER_CERTIFICATE: "cer",
    ObjectKind.CRL: "crl",
    ObjectKind.MANIFEST: "mft",
    ObjectKind.ROA: "roa",
    ObjectKind.ASPA: "asa",
    ObjectKind.GBR: "gbr",
    ObjectKind.SIGNED_PREFIX_LIST: "spl",
    ObjectKind.TAK: "tak",
    ObjectKind.RSC: "sig",
    ObjectKind.GEOFEED: "geofeed",
    ObjectKind.PROTOCOL_MESSAGE: "cms-protocol",
    ObjectKind.CCR: "ccr",
}


@dataclass(frozen=True)
class Entry:
    path: str
    data: bytes
    index: dict[str, str]
    details: dict[str, str]
    provenance: dict[str, str]
    result: RpkiObject | RpkiRepoError


def _tsv(root: Path, name: str) -> dict[str, dict[str, str]]:
    with (root / name).open(newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f, delimiter="\t")}


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def corpus_files(root: Path) -> list[str]:
    """Relative paths of every object file: objects/ and conformance/bbn/, minus text files."""
    out = []
    for top in ("objects", "conformance/bbn"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and path.name != "README" and path.suffix != ".txt":
                out.append(path.relative_to(root).as_posix())
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> list[Entry]:
    index = _tsv(corpus_dir, "INDEX.tsv")
    details = _tsv(corpus_dir, "DETAILS.tsv")
    provenance = _tsv(corpus_dir, "PROVENANCE.tsv")
    entries = []
    for rel in corpus_files(corpus_dir):
        data = (corpus_dir / rel).read_bytes()
        result: RpkiObject | RpkiRepoError
        try:
            result = read_object(data, name=rel)
        except RpkiRepoError as exc:
            result = exc
        entries.append(Entry(rel, data, index[rel], details[rel], provenance[rel], result))
    return entries


def read_ok(corpus: list[Entry]) -> list[tuple[Entry, RpkiObject]]:
    return [(e, e.result) for e in corpus if not isinstance(e.result, RpkiRepoError)]


# --- every file: a value or a clean refusal -------------------------------------------------------
def test_corpus_is_complete(corpus: list[Entry]) -> None:
    # 545 objects/ files + 484 BBN files, minus the BBN README and the 3 RSC .txt payloads.
    assert len(corpus) == 1025
    assert len(read_ok(corpus)) == len(corpus) - len(REFUSED)


def test_every_file_reads_or_is_refused_as_documented(corpus: list[Entry]) -> None:
    problems = []
    for e in corpus:
        expected = REFUSED.get(e.path)
        if isinstance(e.result, RpkiRepoError):
            if expected is None:
                problems.append(f"{e.path}: refused unexpectedly: {e.result}")
            elif e.result.reason is not expected[0]:
                problems.append(f"{e.path}: {e.result.reason} instead of {expected[0]}")
        elif expected is not None:
            problems.append(f"{e.path}: read, but listed as refused ({expected[1]})")
    assert not problems, "\n".join(problems)


def test_refused_table_names_real_files(corpus: list[Entry]) -> None:
    assert set(REFUSED) <= {e.path for e in corpus}


def test_bbn_refusals_are_all_bad_cases(corpus: list[Entry]) -> None:
    """The BBN suite names files bad*/good*: we refuse no good* file (and only bad* ones)."""
    for e in corpus:
        if e.path.startswith("conformance/") and isinstance(e.result, RpkiRepoError):
            assert Path(e.path).name.startswith("bad"), e.path


def test_every_file_without_a_name_too(corpus: list[Entry]) -> None:
    """Without a name, the three wrong-eContentType BBN files read as UNKNOWN_SIGNED / ROA."""
    for e in corpus:
        try:
            obj = read_object(e.data)
        except RpkiRepoError as exc:
            if exc.reason is Reason.OBJECT_BAD_CONTENT_TYPE:
                pytest.fail(f"{e.path}: a name mismatch without a name")
            continue
        if REFUSED.get(e.path, (None,))[0] is Reason.OBJECT_BAD_CONTENT_TYPE:
            expected = ObjectKind.ROA if "MFTWrongType" in e.path else ObjectKind.UNKNOWN_SIGNED
            assert obj.kind is expected, e.path


# --- fast path against full reader ----------------------------------------------------------------
def test_fast_kind_matches_full_reader(corpus: list[Entry]) -> None:
    for e, obj in read_ok(corpus):
        assert detect_kind(e.data, name=e.path) is obj.kind, e.path


def test_fast_signing_time_equals_asn1crypto_path(corpus: list[Entry]) -> None:
    """For EVERY file: fast_signing_time == read_signing_time, or both raise."""
    cms_files = 0
    for e in corpus:
        try:
            fast: object = fast_signing_time(e.data)
        except RpkiRepoError as exc:
            fast = exc.reason
        try:
            slow: object = read_signing_time(e.data)
        except RpkiRepoError as exc:
            slow = exc.reason
        if isinstance(fast, Reason) or isinstance(slow, Reason):
            assert isinstance(fast, Reason) and isinstance(slow, Reason), (e.path, fast, slow)
        else:
            cms_files += 1
            assert isinstance(fast, int | type(None))
            assert (None if fast is None else to_datetime(fast)) == slow, e.path
    # objects/: 339 CMS objects (geofeeds included) minus the garbage-prefixed ASPA and 3 base64
    # files; BBN: 225 minus 10 with a broken envelope or signing-time (see REFUSED).
    assert cms_files == (339 - 4) + (225 - 10)


def test_signing_time_of_read_objects_matches_read_signing_time(corpus: list[Entry]) -> None:
    for e, obj in read_ok(corpus):
        if isinstance(obj, SignedObject):
            assert obj.signing_time == read_signing_time(e.data), e.path


# --- INDEX.tsv ------------------------------------------------------------------------------------
def test_index_type_and_econtent_type(corpus: list[Entry]) -> None:
    for e, obj in read_ok(corpus):
        assert CORPUS_TYPE[obj.kind] == e.index["type"], e.path
        if isinstance(obj, SignedObject):
            assert obj.econtent_type == e.index["econtent_type"], e.path
            assert obj.kind is ECONTENT_KINDS[obj.econtent_type]
        else:
            assert e.index["econtent_type"] == "-", e.path


def test_index_signing_time(corpus: list[Entry]) -> None:
    with_time = without = 0
    for e, obj in read_ok(corpus):
        if not isinstance(obj, SignedObject):
            continue
        if e.index["signing_time"] == "-":
            without += 1
            assert obj.signing_time is None, e.path
        else:
            with_time += 1
            assert obj.signing_time == _ts(e.index["signing_time"]), e.path
    assert (with_time, without) == (358, 149)


# --- DETAILS.tsv ----------------------------------------------------------------------------------
def _validity(obj: RpkiObject) -> tuple[datetime, datetime | None]:
    if isinstance(obj, Crl):
        return obj.this_update, obj.next_update
    if isinstance(obj, SignedObject):
        return obj.not_before, obj.not_after
    return obj.not_before, obj.not_after


def test_details_validity(corpus: list[Entry]) -> None:
    missing = set()
    for e, obj in read_ok(corpus):
        not_before, not_after = _validity(obj)
        if e.details["not_before"] == "-":
            missing.add(e.path)
            continue
        assert not_before == _ts(e.details["not_before"]), e.path
        if e.details["not_after"] != "-":
            assert not_after == _ts(e.details["not_after"]), e.path
    assert missing == DETAILS_UNPARSED


def test_details_manifest_next_update(corpus: list[Entry]) -> None:
    checked = 0
    for e, obj in read_ok(corpus):
        if e.details["mft_next_update"] != "-":
            checked += 1
            assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
            assert obj.content.next_update == _ts(e.details["mft_next_update"]), e.path
    assert checked > 150


def test_details_summary(corpus: list[Entry]) -> None:
    """ROA ASN and prefix count, manifest number and file count, certificate kind, CRL entries."""
    counts = dict.fromkeys(("roa", "mft", "cer", "crl"), 0)
    for e, obj in read_ok(corpus):
        summary = e.details["summary"]
        if m := re.match(r"AS(\d+) prefixes=(\d+)$", summary):
            assert isinstance(obj, SignedObject)
            assert isinstance(obj.content, RouteOriginAttestation)
            assert obj.content.as_id == int(m[1]), e.path
            assert len(obj.content.prefixes) == int(m[2]), e.path
            counts["roa"] += 1
        elif m := re.match(r"mft#(\d+) files=(\d+) ", summary):
            assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
            assert obj.content.manifest_number == int(m[1]), e.path
            assert len(obj.content.files) == int(m[2]), e.path
            counts["mft"] += 1
        elif m := re.match(r"(self-signed CA|CA|EE):", summary):
            assert isinstance(obj, Certificate)
            expected = {
                "self-signed CA": {ObjectKind.TA_CERTIFICATE},
                "CA": {ObjectKind.CA_CERTIFICATE},
                "EE": {ObjectKind.EE_CERTIFICATE, ObjectKind.ROUTER_CERTIFICATE},
            }[m[1]]
            if e.path in KIND_EXCEPTIONS:
                assert obj.kind is KIND_EXCEPTIONS[e.path][0]
            else:
                assert obj.kind in expected, (e.path, obj.kind, summary)
            counts["cer"] += 1
        elif m := re.match(r"CRL revoked=(\d+) ", summary):
            assert isinstance(obj, Crl)
            assert len(obj.revoked_serials) == int(m[1]), e.path
            counts["crl"] += 1
    # Every ROA, manifest, certificate and CRL we read, minus the DETAILS_UNPARSED ones.
    assert counts == {"roa": 293 - 2, "mft": 166 - 1, "cer": 292, "crl": 155}


def test_router_certificates_are_the_router_ees(corpus: list[Entry]) -> None:
    """The 6 BGPsec router certificates of the corpus (README), all EE in DETAILS."""
    routers = {e.path for e, obj in read_ok(corpus) if obj.kind is ObjectKind.ROUTER_CERTIFICATE}
    assert len(routers) == 6
    for path in routers:
        assert next(e for e in corpus if e.path == path).details["summary"].startswith("EE:")


def test_manifest_hashes_match_corpus_files(corpus: list[Entry]) -> None:
    """DETAILS counts listed files present in the corpus by hash; our hash bytes find as many."""
    hashes = {e.index["sha256"] for e in corpus}
    for e, obj in read_ok(corpus):
        m = re.search(r"listed_files_present_in_corpus_by_hash=(\d+)", e.details["summary"])
        if m and isinstance(obj, SignedObject) and isinstance(obj.content, Manifest):
            found = sum(f.hash.hex() in hashes for f in obj.content.files)
            assert found >= int(m[1]), e.path


def test_signed_object_uri_matches_rrdp_origin(corpus: list[Entry]) -> None:
    """Objects taken from RRDP publish elements: the EE SIA signedObject is where they were
    published (PROVENANCE origin), except where the test repository rewrote the host."""
    checked = 0
    for e, obj in read_ok(corpus):
        origin = e.provenance["origin"]
        if origin == "-" or not isinstance(obj, SignedObject):
            continue
        uri = origin.split()[-1]
        checked += 1
        if "/rrdp-rpki-client-regress/" in e.path:  # host rewritten to rpki.example.com
            assert obj.signed_object_uri is not None
            assert obj.signed_object_uri.split("/", 3)[3] == uri.split("/", 3)[3]
        else:
            assert obj.signed_object_uri == uri, e.path
    assert checked == 260


def test_details_location_is_among_our_uris(corpus: list[Entry]) -> None:
    """DETAILS gives the first rsync URI of the SIA (or, without one, the AIA)."""
    checked = 0
    for e, obj in read_ok(corpus):
        location = e.details["location_from_sia_or_aia"]
        if location == "-" or isinstance(obj, Crl):
            continue
        where, uri = location.split(" ", 1)
        cert = obj.ee_certificate if isinstance(obj, SignedObject) else obj
        sia = cert.ca_repository + cert.rpki_manifest + cert.rpki_notify + cert.signed_object
        assert uri in (sia if where == "SIA" else cert.ca_issuers), (e.path, location)
        checked += 1
    assert checked == 783


def test_walk_pointers_equal_the_full_reader(corpus: list[Entry]) -> None:
    """read_ca_pointers / read_manifest_entries (rpkirepo fetch's walk) against read_object, on
    every corpus certificate and manifest the full reader accepts."""
    from rpkirepo.objects import Certificate, Manifest, read_ca_pointers, read_manifest_entries

    certs = manifests = 0
    for e, obj in read_ok(corpus):
        if isinstance(obj, Certificate):
            p = read_ca_pointers(e.data)
            assert (p.kind, p.ca_repository, p.rpki_manifest, p.rpki_notify) == (
                obj.kind,
                obj.ca_repository,
                obj.rpki_manifest,
                obj.rpki_notify,
            ), e.path
            certs += 1
        elif isinstance(obj, SignedObject) and isinstance(obj.content, Manifest):
            m = read_manifest_entries(e.data)
            assert m.manifest_number == obj.content.manifest_number, e.path
            assert m.files == tuple((f.file, f.hash) for f in obj.content.files), e.path
            manifests += 1
    assert certs > 50 and manifests > 50, (certs, manifests)
