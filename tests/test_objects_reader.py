"""read_object in detail: decoded values of real objects, and hand-built eContents for the edge
cases (RFC 3779 bit strings, maxLength, ASPA profile, manifest entries)."""

from __future__ import annotations

import base64
from ipaddress import ip_network
from pathlib import Path

import pytest
from asn1crypto import cms

from rpkirepo.errors import Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.objects import (
    AsProviderAttestation,
    Certificate,
    Crl,
    FileAndHash,
    Manifest,
    ObjectKind,
    RoaIpAddress,
    RouteOriginAttestation,
    SignedObject,
    _schema,
    detect_kind,
    map_exceptions,
    name_allows,
    read_object,
    read_signing_time,
)

ROA = "objects/roa/rrdp-krill-ui-dev/AS14008.roa"  # DER, Krill
ASPA = "objects/asa/rpki-client-regress/AS1000.asa"
MFT = "objects/mft/rrdp-krill-ui-dev/B7F604EA4F4D54DEF2BC3740540178C01189EAA3.mft"


# --- a tiny DER encoder, to build eContents by hand -----------------------------------------------
def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def bits(unused: int, body: bytes) -> bytes:
    return tlv(0x03, bytes([unused]) + body)


def explicit0(inner: bytes) -> bytes:
    return tlv(0xA0, inner)


def roa(as_id: int, *families: bytes, version: int | None = None) -> bytes:
    head = explicit0(integer(version)) if version is not None else b""
    return seq(head, integer(as_id), seq(*families))


def family(afi: bytes, *addresses: bytes) -> bytes:
    return seq(tlv(0x04, afi), seq(*addresses))


def address(bit_string: bytes, max_length: int | None = None) -> bytes:
    return seq(bit_string, integer(max_length) if max_length is not None else b"")


V4, V6 = b"\x00\x01", b"\x00\x02"


def with_econtent(signed: bytes, econtent: bytes) -> bytes:
    """The signed object re-encoded with another eContent (the signature no longer verifies;
    the reader does not check signatures)."""
    info = cms.ContentInfo.load(signed)
    signed_data = info["content"]
    signed_data["encap_content_info"] = cms.EncapsulatedContentInfo(
        {
            "content_type": signed_data["encap_content_info"]["content_type"].dotted,
            "content": cms.ParsableOctetString(econtent),
        }
    )
    return bytes(info.dump(force=True))


@pytest.fixture(scope="module")
def roa_bytes(corpus_dir: Path) -> bytes:
    return (corpus_dir / ROA).read_bytes()


def read_roa(roa_bytes: bytes, econtent: bytes) -> RouteOriginAttestation:
    obj = read_object(with_econtent(roa_bytes, econtent), name="x.roa")
    assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
    return obj.content


def refused(data: bytes, reason: Reason, name: str | None = None) -> RpkiRepoError:
    with pytest.raises(RpkiRepoError) as info:
        read_object(data, name=name)
    assert info.value.reason is reason, info.value
    return info.value


# --- ROA (RFC 9582; RFC 3779 §2.2.3.8 bit strings) ------------------------------------------------
def test_roa_of_the_corpus(corpus_dir: Path, roa_bytes: bytes) -> None:
    obj = read_object(roa_bytes, name=ROA)
    assert isinstance(obj, SignedObject) and obj.kind is ObjectKind.ROA
    assert obj.econtent_type == "1.2.840.113549.1.9.16.1.24"
    assert obj.ee_certificate.kind is ObjectKind.EE_CERTIFICATE
    assert obj.signed_object_uri is not None and obj.signed_object_uri.endswith("/AS14008.roa")
    assert obj.not_before <= obj.signing_time <= obj.not_after  # type: ignore[operator]
    assert isinstance(obj.content, RouteOriginAttestation)
    assert obj.content.as_id == 14008


def test_roa_prefix_encodings(roa_bytes: bytes) -> None:
    content = read_roa(
        roa_bytes,
        roa(
            64496,
            family(
                V4,
                address(bits(0, b"\x0a"), 24),  # 10.0.0.0/8-24
                address(bits(0, b"")),  # 0.0.0.0/0
                address(bits(6, b"\x0a\x40")),  # 10.64.0.0/10
                address(bits(6, b"\x0a\x7f")),  # the same, with BER garbage in unused bits
                address(bits(0, b"\xc0\x00\x02\x01"), 32),  # a host route
            ),
            family(V6, address(bits(0, bytes.fromhex("20010db8")), 48)),
        ),
    )
    assert content.as_id == 64496
    assert content.prefixes == (
        RoaIpAddress(ip_network("10.0.0.0/8"), 24),
        RoaIpAddress(ip_network("0.0.0.0/0")),
        RoaIpAddress(ip_network("10.64.0.0/10")),
        RoaIpAddress(ip_network("10.64.0.0/10")),
        RoaIpAddress(ip_network("192.0.2.1/32"), 32),
        RoaIpAddress(ip_network("2001:db8::/32"), 48),
    )
    assert [p.effective_max_length for p in content.prefixes] == [24, 0, 10, 10, 32, 48]


def test_roa_explicit_version_zero_and_extreme_asids(roa_bytes: bytes) -> None:
    one = family(V4, address(bits(0, b"\x0a")))
    assert read_roa(roa_bytes, roa(0, one, version=0)).as_id == 0
    assert read_roa(roa_bytes, roa(2**32 - 1, one)).as_id == 2**32 - 1


@pytest.mark.parametrize(
    ("econtent", "reason"),
    [
        (roa(1, family(V4, address(bits(7, b"\x0a\x00\x00\x00\x00")))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(V6, address(bits(7, bytes(17))))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(V4, address(bits(0, b"\x0a"), 7))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(V4, address(bits(0, b"\x0a"), 33))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(V6, address(bits(0, b"\x20"), 129))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(b"\x00\x01\x01", address(bits(0, b"\x0a")))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(b"\x00\x03", address(bits(0, b"\x0a")))), Reason.OBJECT_BAD_RESOURCE),
        (roa(2**32, family(V4, address(bits(0, b"\x0a")))), Reason.OBJECT_BAD_RESOURCE),
        (roa(-1, family(V4, address(bits(0, b"\x0a")))), Reason.OBJECT_BAD_RESOURCE),
        (roa(1, family(V4, address(bits(8, b"\x0a")))), Reason.OBJECT_MALFORMED),  # 8 unused
        (roa(1, family(V4, address(bits(3, b"")))), Reason.OBJECT_MALFORMED),  # unused, no bits
        (roa(1, family(V4, address(tlv(0x03, b"")))), Reason.OBJECT_MALFORMED),
        (roa(1, family(V4, address(bits(0, b"\x0a"))), version=1), Reason.OBJECT_MALFORMED),
        (roa(1), Reason.OBJECT_MALFORMED),  # no prefixes
        (roa(1, family(V4, address(bits(0, b"\x0a")))) + b"\x00", Reason.OBJECT_TRAILING_DATA),
        (  # a field after ipAddrBlocks
            seq(integer(1), seq(family(V4, address(bits(0, b"\x0a")))), integer(5)),
            Reason.OBJECT_MALFORMED,
        ),
        (tlv(0x04, b"\x00"), Reason.OBJECT_MALFORMED),  # not a SEQUENCE
        (b"\x30\x80" * 2000 + b"\x00\x00" * 2000, Reason.OBJECT_MALFORMED),  # nesting bomb
    ],
)
def test_roa_refusals(roa_bytes: bytes, econtent: bytes, reason: Reason) -> None:
    refused(with_econtent(roa_bytes, econtent), reason, "x.roa")


def test_roa_prefixes_match_an_independent_decoder(corpus_dir: Path) -> None:
    """Every ROA the reader accepts: prefixes equal asn1crypto's own BIT STRING decoding."""
    checked = 0
    for path in sorted((corpus_dir / "objects/roa").rglob("*.roa")):
        try:
            obj = read_object(path.read_bytes())
        except RpkiRepoError:
            continue
        assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
        info = cms.ContentInfo.load(path.read_bytes())
        econtent = bytes(info["content"]["encap_content_info"]["content"])
        expected = []
        for block in _schema.RouteOriginAttestation.load(econtent).native["ip_addr_blocks"]:
            width = 32 if block["address_family"] == V4 else 128
            for entry in block["addresses"]:
                prefix_bits = "".join(map(str, entry["address"]))
                value = int(prefix_bits or "0", 2) << (width - len(prefix_bits))
                network = ip_network((value, len(prefix_bits)))
                expected.append(RoaIpAddress(network, entry["max_length"]))
        assert obj.content.prefixes == tuple(expected), path
        checked += 1
    assert checked == 167


def test_big_ber_roa(corpus_dir: Path) -> None:
    data = (
        corpus_dir / "objects/roa/rpki-validator-3/g11HohjaKcA9vAJV9LrYPq1bKZQ.roa"
    ).read_bytes()
    obj = read_object(data)
    assert isinstance(obj, SignedObject) and isinstance(obj.content, RouteOriginAttestation)
    assert (obj.content.as_id, len(obj.content.prefixes)) == (8551, 3870)


# --- manifests (RFC 9286) -------------------------------------------------------------------------
def test_manifest_of_the_corpus(corpus_dir: Path) -> None:
    obj = read_object((corpus_dir / MFT).read_bytes(), name=MFT)
    assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
    mft = obj.content
    assert mft.this_update < mft.next_update
    assert all(len(f.hash) == 32 for f in mft.files)
    crl_names = [f.file for f in mft.files if f.file.endswith(".crl")]
    assert crl_names == [Path(MFT).stem + ".crl"]  # Krill names the CRL after the key


def test_manifest_number_of_any_size(corpus_dir: Path) -> None:
    obj = read_object((corpus_dir / "objects/mft/rpki-rs/signature-alg-mismatch.mft").read_bytes())
    assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
    assert obj.content.manifest_number > 2**64
    assert len(str(obj.content.manifest_number)) == 46


def _manifest(number: int, files: bytes, alg: str = "2.16.840.1.101.3.4.2.1") -> bytes:
    from rpkirepo.objects._der import encode_oid

    gtime = tlv(0x18, b"20240101000000Z")
    return seq(
        integer(number), gtime, tlv(0x18, b"20240102000000Z"), tlv(0x06, encode_oid(alg)), files
    )


def _entry(name: bytes, digest: bytes) -> bytes:
    return seq(tlv(0x16, name), bits(0, digest))


def test_manifest_entries(corpus_dir: Path) -> None:
    base = (corpus_dir / MFT).read_bytes()
    data = with_econtent(base, _manifest(7, seq(_entry(b"a.roa", bytes(32)))))
    obj = read_object(data, name="x.mft")
    assert isinstance(obj, SignedObject) and isinstance(obj.content, Manifest)
    assert obj.content.files == (FileAndHash("a.roa", bytes(32)),)
    assert obj.content.manifest_number == 7
    empty = read_object(with_econtent(base, _manifest(0, seq())))
    assert isinstance(empty, SignedObject) and isinstance(empty.content, Manifest)
    assert empty.content.files == ()
    for bad in (b"../a.roa", b"a/b.roa", b"..", b"", b"a b.roa", b"a\x00.roa"):
        refused(
            with_econtent(base, _manifest(1, seq(_entry(bad, bytes(32))))), Reason.OBJECT_MALFORMED
        )
    for econtent in (
        _manifest(1, seq(_entry(b"a.roa", bytes(31)))),
        _manifest(1, seq(_entry(b"a.roa", bytes(32))), alg="1.3.14.3.2.26"),  # SHA-1
        _manifest(-1, seq()),
        _manifest(1, seq(seq(tlv(0x16, b"a.roa"), bits(1, bytes(32))))),  # not whole octets
    ):
        refused(with_econtent(base, econtent), Reason.OBJECT_MALFORMED)


# --- ASPA (draft-ietf-sidrops-aspa-profile) -------------------------------------------------------
@pytest.mark.parametrize(
    ("rel", "customer", "providers"),
    [
        ("objects/asa/rpki-client-regress/AS1000.asa", 1000, (1025,)),
        (
            "objects/asa/rpki-client-regress/5m80fwYws_3FiFD7JiQjAqZ1RYQ.asa",
            15562,
            (2914, 8283, 51088, 206238),
        ),
        (
            "objects/asa/rpki-commons/GOOD-profile-15-draft-ietf-sidrops-profile-15-sample.asa",
            15562,
            (2914, 8283, 51088, 206238),
        ),
        ("objects/asa/rpki-prover/AS204325.asa", 204325, (65000, 65002, 65003)),
        (
            "objects/asa/rpki-client-regress-history/AS945.asa",
            945,
            (1299, 6939, 8849, 20473, 50058, 59105),
        ),
    ],
)
def test_aspa_values(corpus_dir: Path, rel: str, customer: int, providers: tuple[int, ...]) -> None:
    obj = read_object((corpus_dir / rel).read_bytes(), name=rel)
    assert isinstance(obj, SignedObject) and obj.kind is ObjectKind.ASPA
    assert obj.content == AsProviderAttestation(customer, providers)


def test_aspa_refusals(corpus_dir: Path) -> None:
    base = (corpus_dir / ASPA).read_bytes()
    good = seq(explicit0(integer(1)), integer(64496), seq(integer(64497), integer(64498)))
    obj = read_object(with_econtent(base, good))
    assert isinstance(obj, SignedObject)
    assert obj.content == AsProviderAttestation(64496, (64497, 64498))
    for econtent, reason in (
        (seq(explicit0(integer(0)), integer(1), seq(integer(2))), Reason.OBJECT_MALFORMED),
        (seq(integer(1), seq(integer(2))), Reason.OBJECT_MALFORMED),  # no version
        (seq(explicit0(integer(1)), integer(1), seq()), Reason.OBJECT_MALFORMED),
        (seq(explicit0(integer(1)), integer(1), seq(integer(2**32))), Reason.OBJECT_BAD_RESOURCE),
        (seq(explicit0(integer(1)), integer(1), seq(seq(integer(2)))), Reason.OBJECT_MALFORMED),
    ):
        refused(with_econtent(base, econtent), reason)


# --- certificates and CRLs (RFC 6487) -------------------------------------------------------------
def test_ta_certificate(corpus_dir: Path) -> None:
    cert = read_object(
        (corpus_dir / "objects/cer/rpki-client-regress/ripe-ncc-ta.cer").read_bytes()
    )
    assert isinstance(cert, Certificate) and cert.kind is ObjectKind.TA_CERTIFICATE
    assert cert.ca_repository == ("rsync://rpki.ripe.net/repository/",)
    assert cert.rpki_manifest == ("rsync://rpki.ripe.net/repository/ripe-ncc-ta.mft",)
    assert cert.rpki_notify == ("https://rrdp.ripe.net/notification.xml",)
    assert cert.ca_issuers == () and cert.crl_distribution_points == ()
    assert cert.subject_key_identifier == bytes.fromhex("e8552b1fd6d1a4f7e404c6d8e5680d1ebc163fc3")
    assert cert.not_before.tzinfo is not None


def test_ca_certificate_with_two_sia_schemes(corpus_dir: Path) -> None:
    cert = read_object((corpus_dir / "objects/cer/rpki.net-history/2010-apnic.cer").read_bytes())
    assert isinstance(cert, Certificate)
    assert [u.split(":", 1)[0] for u in cert.ca_repository] == ["rsync", "https"]


def test_router_certificate(corpus_dir: Path) -> None:
    cert = read_object((corpus_dir / "objects/cer/rpki-rs/router.cer").read_bytes(), name="r.cer")
    assert isinstance(cert, Certificate) and cert.kind is ObjectKind.ROUTER_CERTIFICATE
    assert cert.ca_issuers == ("rsync://parent.tld/aia/repo",)
    assert cert.crl_distribution_points == ("rsync://some.tld/crl/my.crl",)
    assert cert.ca_repository == cert.rpki_manifest == ()


def test_plain_ee_certificate(corpus_dir: Path) -> None:
    rel = "conformance/bbn/root/badCertNoBasicConstr.cer"
    cert = read_object((corpus_dir / rel).read_bytes())
    assert isinstance(cert, Certificate) and cert.kind is ObjectKind.EE_CERTIFICATE


def test_crl(corpus_dir: Path) -> None:
    rel = "objects/crl/rrdp-ripe-prod-2019/lzkCc7Myo8KSctQvclH_mRliuNQ.crl"
    crl = read_object((corpus_dir / rel).read_bytes(), name=rel)
    assert isinstance(crl, Crl) and crl.kind is ObjectKind.CRL
    assert crl.next_update is not None and crl.this_update < crl.next_update
    assert crl.crl_number is not None and crl.authority_key_identifier is not None
    assert detect_kind((corpus_dir / rel).read_bytes()) is ObjectKind.CRL


# --- names, kinds, geofeeds, errors ---------------------------------------------------------------
def test_name_is_a_checked_claim(roa_bytes: bytes) -> None:
    assert read_object(roa_bytes, name="x.ROA").kind is ObjectKind.ROA
    for name in ("x.der", "x", None, "dir.roa/x.bin"):
        assert read_object(roa_bytes, name=name).kind is ObjectKind.ROA
    for name in ("x.mft", "x.cer", "x.crl", "a/b/x.asa"):
        error = refused(roa_bytes, Reason.OBJECT_BAD_CONTENT_TYPE, name)
        assert error.context["name"] == name
        with pytest.raises(RemoteProtocolError):
            detect_kind(roa_bytes, name=name)
    assert name_allows("x.roa", ObjectKind.ROA) and not name_allows("x.roa", ObjectKind.CRL)


def test_geofeed_csv(corpus_dir: Path) -> None:
    rel = "objects/geofeed/rpki-client-regress-history/geofeed-rfc9092.csv"
    data = (corpus_dir / rel).read_bytes()
    obj = read_object(data, name=rel)
    assert isinstance(obj, SignedObject) and obj.kind is ObjectKind.GEOFEED
    assert obj.detached and obj.content is None
    assert (
        obj.signing_time is not None and obj.signing_time.isoformat() == "2021-05-20T16:28:39+00:00"
    )
    assert detect_kind(data) is ObjectKind.GEOFEED


def test_base64_files_read_once_decoded(corpus_dir: Path) -> None:
    for rel, kind in (
        ("objects/cms-protocol/rpki-commons/dtag-inbound-2.der", ObjectKind.PROTOCOL_MESSAGE),
        ("objects/gbr/rpki-monitoring/corrupted_5GzpWH5N-vMm_nh7A93VwzaW4zk.gbr", ObjectKind.GBR),
    ):
        text = (corpus_dir / rel).read_bytes()
        refused(text, Reason.OBJECT_TEXT, rel)
        assert read_object(base64.b64decode(text), name=rel).kind is kind


def test_shapes_that_are_no_rpki_object() -> None:
    refused(seq(integer(1)), Reason.OBJECT_UNKNOWN_TYPE)
    refused(seq(), Reason.OBJECT_UNKNOWN_TYPE)
    refused(seq(seq(), seq()), Reason.OBJECT_MALFORMED)
    refused(seq(tlv(0x06, b"\x2a\x03")), Reason.OBJECT_NOT_SIGNED_DATA)
    with pytest.raises(RemoteProtocolError) as info:
        read_signing_time(seq(seq(), seq(), tlv(0x03, b"\x00")))
    assert info.value.reason is Reason.OBJECT_NOT_SIGNED_DATA


def test_map_exceptions() -> None:
    with pytest.raises(RemoteProtocolError) as info, map_exceptions("thing"):
        raise KeyError("field")
    assert info.value.reason is Reason.OBJECT_MALFORMED
    assert isinstance(info.value.__cause__, KeyError)
    assert "thing: KeyError" in info.value.detail
    with pytest.raises(RemoteProtocolError) as info, map_exceptions("t", Reason.OBJECT_BAD_TIME):
        raise ValueError("x" * 500)
    assert info.value.reason is Reason.OBJECT_BAD_TIME and len(info.value.detail) < 300
    original = RemoteProtocolError(Reason.OBJECT_EMPTY)
    with pytest.raises(RemoteProtocolError) as info, map_exceptions("thing"):
        raise original
    assert info.value is original
    with pytest.raises(RuntimeError), map_exceptions("thing"):  # not a data error: untouched
        raise RuntimeError("bug")


def test_values_validate_on_construction() -> None:
    with pytest.raises(RemoteProtocolError):
        RoaIpAddress(ip_network("10.0.0.0/8"), 7)
    with pytest.raises(RemoteProtocolError):
        RouteOriginAttestation(2**32, (RoaIpAddress(ip_network("10.0.0.0/8")),))
    with pytest.raises(RemoteProtocolError):
        FileAndHash("..", bytes(32))
    with pytest.raises(RemoteProtocolError):
        AsProviderAttestation(1, ())
    with pytest.raises(ValueError):
        SignedObject(ObjectKind.CRL, "1.2", None, None, None)  # type: ignore[arg-type]
