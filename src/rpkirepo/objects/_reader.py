"""The full reader: bytes in, a typed :data:`RpkiObject` out, via asn1crypto.

Theory of operation.

1. :func:`~._framing.frame` checks the outer frame (empty, too large, text, trailing bytes) and
   unwraps a geofeed's signature block; then the TLV walker checks the whole tree (lengths,
   end-of-contents, nesting depth), so asn1crypto never sees unbounded nesting.
2. The first value inside the outer SEQUENCE tells the shape apart: an OBJECT IDENTIFIER starts a
   CMS ContentInfo (RFC 5652 §3); a SEQUENCE starts a certificate or a CRL, told apart by the
   TBS shape (see :mod:`._kinds`).  The fast path's structural walk of that shape runs first, so
   this reader refuses everything the fast path refuses (asn1crypto alone ignores, for example,
   bytes after the value inside an EXPLICIT tag).
3. asn1crypto parses the shape (BER or DER); the schemas of :mod:`._schema` parse the eContent of
   manifests, ROAs and ASPAs.  Times are decoded by :func:`~._time.decode_time` from the raw
   contents octets, strictly, so this reader and the fast path agree on every time.
4. Every touch of an asn1crypto value happens inside :func:`~._boundary.map_exceptions`; only
   :class:`~rpkirepo.errors.RpkiRepoError` subclasses leave this module.

This is a reader, not a validator: signatures, digests, resource containment and most profile
rules of RFC 6487/6488 are not checked.  It does refuse what would make its values wrong or
ambiguous: the structural rules the fast path applies too (exactly one SignerInfo, exactly one EE
certificate, at most one signing-time with one value; RFC 6488 §2.1, RFC 5652 §11.3), duplicate
certificate or CRL extensions (RFC 5280 §4.2), prefixes longer than their family and bad
maxLength (RFC 3779 §2.2.3.8, RFC 9582 §4.3.3), a manifest hash algorithm other than SHA-256
(RFC 9286 §4.2.1), unsafe manifest file names, and eContent it cannot decode.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Final

from asn1crypto import cms, core, crl, x509

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS, Limits

from . import _schema
from ._boundary import map_exceptions
from ._der import OID, Der, Tlv, malformed
from ._fast import _classify
from ._framing import frame
from ._kinds import (
    ECONTENT_KINDS,
    OID_ASPA,
    OID_CCR,
    OID_MANIFEST,
    OID_ROA,
    OID_SIGNED_DATA,
    ObjectKind,
    check_name,
)
from ._model import (
    AsProviderAttestation,
    Certificate,
    Crl,
    FileAndHash,
    Manifest,
    RoaIpAddress,
    RouteOriginAttestation,
    RpkiObject,
    SignedObject,
)
from ._time import decode_time, to_datetime

__all__ = ["read_object", "read_signing_time"]

#: An asn1crypto value.  asn1crypto is untyped; these never leave the module.
_Asn1 = Any

_OID_SIGNING_TIME: Final = "1.2.840.113549.1.9.5"  # RFC 5652 §11.3
_OID_SHA256: Final = "2.16.840.1.101.3.4.2.1"  # RFC 7935 §2 / RFC 9286 §4.2.1
_OID_BASIC_CONSTRAINTS: Final = "2.5.29.19"
_OID_EKU: Final = "2.5.29.37"
_OID_SKI: Final = "2.5.29.14"
_OID_AKI: Final = "2.5.29.35"
_OID_CRL_DP: Final = "2.5.29.31"
_OID_CRL_NUMBER: Final = "2.5.29.20"
_OID_AIA: Final = "1.3.6.1.5.5.7.1.1"
_OID_SIA: Final = "1.3.6.1.5.5.7.1.11"
_OID_BGPSEC_ROUTER: Final = "1.3.6.1.5.5.7.3.30"  # RFC 8209 §3.1.3.2
# Access methods (RFC 6487 §4.8.7, §4.8.8; RFC 8182 §3.2).
_AD_CA_ISSUERS: Final = "1.3.6.1.5.5.7.48.2"
_AD_CA_REPOSITORY: Final = "1.3.6.1.5.5.7.48.5"
_AD_RPKI_MANIFEST: Final = "1.3.6.1.5.5.7.48.10"
_AD_SIGNED_OBJECT: Final = "1.3.6.1.5.5.7.48.11"
_AD_RPKI_NOTIFY: Final = "1.3.6.1.5.5.7.48.13"
# RFC 3779 §2.2.3.3 address family identifiers.
_Family = type[IPv4Network] | type[IPv6Network]
_AFI: Final[dict[bytes, tuple[int, _Family]]] = {
    b"\x00\x01": (32, IPv4Network),
    b"\x00\x02": (128, IPv6Network),
}


# --- small decoders -------------------------------------------------------------------------------
def _strict(seq: _Asn1, what: str) -> _Asn1:
    """Make an asn1crypto Sequence as strict as the fast path's field matcher.

    asn1crypto builds (and so checks) each field only when it is first accessed, and keeps values
    left over after the last field without complaint.  This builds every field now and refuses
    left-overs, so a broken field we do not read still fails, as it does in the fast path.
    """
    for key in seq:  # iterating a Sequence yields its field names
        seq[key]
    return _no_extra(seq, what)


def _no_extra(seq: _Asn1, what: str) -> _Asn1:
    """Refuse values after the last field of a Sequence whose fields have been accessed."""
    if seq.children is not None and len(seq.children) > len(seq._fields):
        raise malformed(f"{what}: unexpected field")
    return seq


def _time(value: _Asn1) -> datetime:
    """A Time CHOICE, UTCTime or GeneralizedTime as a UTC datetime (strict; see ._time)."""
    chosen = value.chosen if isinstance(value, core.Choice) else value
    if chosen.method != 0 or chosen.class_ != 0:
        raise RemoteProtocolError(Reason.OBJECT_BAD_TIME, "a time is not a primitive universal")
    return to_datetime(decode_time(int(chosen.tag), bytes(chosen.contents)))


def _ascii(value: _Asn1) -> str:
    """An IA5String's text (primitive encodings only)."""
    if value.method != 0:
        raise malformed("constructed IA5String")
    return bytes(value.contents).decode("ascii")


def _bits_as_bytes(value: _Asn1) -> bytes:
    """A BIT STRING with no unused bits, as bytes (manifest hashes)."""
    raw = bytes(value.contents) if value.method == 0 else b""
    if not raw or raw[0] != 0:
        raise malformed("BIT STRING is not a whole number of octets")
    return raw[1:]


def _int(value: _Asn1) -> int:
    native = value.native
    if not isinstance(native, int):
        raise malformed("expected an INTEGER")
    return native


def _uris(general_names: _Asn1) -> list[str]:
    """The uniformResourceIdentifier entries of GeneralNames (others are skipped)."""
    return [
        _ascii(name.chosen) for name in general_names if name.name == "uniform_resource_identifier"
    ]


def _extensions(extensions: _Asn1) -> dict[str, _Asn1]:
    """extnID (dotted) -> extnValue; a repeated extension is refused (RFC 5280 §4.2)."""
    out: dict[str, _Asn1] = {}
    if isinstance(extensions, core.Void):
        return out
    for ext in extensions:
        _strict(ext, "Extension")
        oid = str(ext["extn_id"].dotted)
        if oid in out:
            raise malformed(f"duplicate extension {oid}")
        out[oid] = ext["extn_value"]
    return out


def _access(extension_value: _Asn1 | None) -> dict[str, list[str]]:
    """accessMethod (dotted) -> URIs, of an SIA or AIA extension (RFC 5280 §4.2.2.1, §4.2.2.2)."""
    out: dict[str, list[str]] = {}
    if extension_value is not None:
        for desc in extension_value.parsed:
            method = str(desc["access_method"].dotted)
            out.setdefault(method, []).extend(_uris([desc["access_location"]]))
    return out


def _octets(value: _Asn1) -> bytes | None:
    return None if isinstance(value, core.Void) else bytes(value)


# --- certificates ---------------------------------------------------------------------------------
def _certificate(cert: _Asn1) -> Certificate:
    """RFC 6487 §4 fields of an asn1crypto Certificate."""
    with map_exceptions("certificate"):
        tbs = _strict(_strict(cert, "Certificate")["tbs_certificate"], "TBSCertificate")
        validity = _strict(tbs["validity"], "Validity")
        exts = _extensions(tbs["extensions"])
        sia = _access(exts.get(_OID_SIA))
        aia = _access(exts.get(_OID_AIA))
        crldp: list[str] = []
        if _OID_CRL_DP in exts:
            for point in exts[_OID_CRL_DP].parsed:
                name = point["distribution_point"]
                if not isinstance(name, core.Void) and name.name == "full_name":
                    crldp.extend(_uris(name.chosen))
        ski = _octets(exts[_OID_SKI].parsed) if _OID_SKI in exts else None
        aki = None
        if _OID_AKI in exts:
            aki = _octets(exts[_OID_AKI].parsed["key_identifier"])
        is_ca = _OID_BASIC_CONSTRAINTS in exts and bool(
            exts[_OID_BASIC_CONSTRAINTS].parsed["ca"].native
        )
        if is_ca:
            # RFC 6487 §4.8.3: a self-signed certificate: issuer == subject, AKI absent or == SKI.
            same_name = bytes(tbs["issuer"].chosen.contents) == bytes(
                tbs["subject"].chosen.contents
            )
            self_signed = same_name and (aki is None or aki == ski)
            kind = ObjectKind.TA_CERTIFICATE if self_signed else ObjectKind.CA_CERTIFICATE
        elif _OID_EKU in exts and any(
            str(purpose.dotted) == _OID_BGPSEC_ROUTER for purpose in exts[_OID_EKU].parsed
        ):
            kind = ObjectKind.ROUTER_CERTIFICATE  # RFC 8209 §3.1.3.2
        else:
            kind = ObjectKind.EE_CERTIFICATE
        return Certificate(
            kind=kind,
            serial=_int(tbs["serial_number"]),
            not_before=_time(validity["not_before"]),
            not_after=_time(validity["not_after"]),
            subject_key_identifier=ski,
            authority_key_identifier=aki,
            ca_repository=tuple(sia.get(_AD_CA_REPOSITORY, ())),
            rpki_manifest=tuple(sia.get(_AD_RPKI_MANIFEST, ())),
            rpki_notify=tuple(sia.get(_AD_RPKI_NOTIFY, ())),
            signed_object=tuple(sia.get(_AD_SIGNED_OBJECT, ())),
            ca_issuers=tuple(aia.get(_AD_CA_ISSUERS, ())),
            crl_distribution_points=tuple(crldp),
        )


def _crl(data: bytes) -> Crl:
    """RFC 6487 §5 fields of a CRL."""
    with map_exceptions("CRL"):
        outer = _strict(crl.CertificateList.load(data, strict=True), "CertificateList")
        tbs = _strict(outer["tbs_cert_list"], "TBSCertList")
        exts = _extensions(tbs["crl_extensions"])
        next_update = tbs["next_update"]
        number = exts[_OID_CRL_NUMBER].parsed if _OID_CRL_NUMBER in exts else None
        aki = None
        if _OID_AKI in exts:
            aki = _octets(exts[_OID_AKI].parsed["key_identifier"])
        revoked = tbs["revoked_certificates"]
        return Crl(
            this_update=_time(tbs["this_update"]),
            next_update=None if isinstance(next_update, core.Void) else _time(next_update),
            crl_number=None if number is None else _int(number),
            authority_key_identifier=aki,
            revoked_serials=()
            if isinstance(revoked, core.Void)
            else tuple(_int(entry["user_certificate"]) for entry in revoked),
        )


# --- CMS (RFC 5652 / RFC 6488) --------------------------------------------------------------------
def _envelope(data: bytes) -> tuple[_Asn1, str, _Asn1]:
    """(SignedData, eContentType, the one SignerInfo), by the rules the fast path applies."""
    with map_exceptions("CMS"):
        content_info = cms.ContentInfo.load(data, strict=True)
        ctype = str(content_info["content_type"].dotted)
        if ctype != OID_SIGNED_DATA:
            detail = "an unsigned CCR" if ctype == OID_CCR else f"contentType {ctype}"
            raise RemoteProtocolError(Reason.OBJECT_NOT_SIGNED_DATA, f"not SignedData: {detail}")
        _strict(content_info, "ContentInfo")
        signed_data = content_info["content"]
        if isinstance(signed_data, core.Void):
            raise malformed("ContentInfo: no content")
        _strict(signed_data, "SignedData")
        encap = _strict(signed_data["encap_content_info"], "EncapsulatedContentInfo")
        etype = str(encap["content_type"].dotted)
        infos = signed_data["signer_infos"]
        if len(infos) != 1:  # RFC 6488 §2.1
            raise malformed("SignedData: not exactly one SignerInfo (RFC 6488 §2.1)")
        return signed_data, etype, _strict(infos[0], "SignerInfo")


def _signing_time(signer: _Asn1) -> datetime | None:
    """RFC 5652 §11.3: the signing-time signed attribute; at most one, with exactly one value."""
    with map_exceptions("CMS signedAttrs"):
        attrs = signer["signed_attrs"]
        if isinstance(attrs, core.Void):
            return None
        found = None
        for attr in attrs:
            _strict(attr, "Attribute")
            if str(attr["type"].dotted) == _OID_SIGNING_TIME:
                if found is not None:
                    raise RemoteProtocolError(
                        Reason.OBJECT_BAD_TIME, "more than one signing-time attribute"
                    )
                found = attr["values"]
        if found is None:
            return None
        if len(found) != 1:
            raise RemoteProtocolError(
                Reason.OBJECT_BAD_TIME, "signing-time attribute does not hold exactly one value"
            )
        return _time(found[0])


def _ee_certificate(signed_data: _Asn1) -> Certificate:
    """RFC 6488 §2.1.4: certificates holds exactly one certificate, the EE certificate."""
    with map_exceptions("CMS certificates"):
        certs = signed_data["certificates"]
        if isinstance(certs, core.Void) or len(certs) != 1 or certs[0].name != "certificate":
            raise malformed("SignedData: not exactly one EE certificate (RFC 6488 §2.1.4)")
        cert = certs[0].chosen
    return _certificate(cert)


def _content_der(econtent: bytes, what: str) -> None:
    """Frame and walk an eContent before asn1crypto parses it."""
    der = Der(econtent)
    tlv: Tlv = der.tlv(0, len(econtent))
    if tlv[3] != len(econtent):
        raise RemoteProtocolError(Reason.OBJECT_TRAILING_DATA, f"bytes after the {what} eContent")
    der.walk(tlv)


def _prefix(address: _Asn1, width: int, family: _Family) -> IPv4Network | IPv6Network:
    """RFC 3779 §2.2.3.8: an IPAddress BIT STRING as a network; bits past the length ignored."""
    raw = bytes(address.contents) if address.method == 0 else b""
    if not raw or raw[0] > 7 or (len(raw) == 1 and raw[0]):
        raise malformed("ROA: bad IPAddress BIT STRING")
    body = raw[1:]
    length = len(body) * 8 - raw[0]
    if length > width:
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_RESOURCE,
            f"ROA: a {length}-bit prefix in a {width}-bit address family (RFC 3779 §2.2.3.8)",
        )
    value = int.from_bytes(body + bytes(width // 8 - len(body)), "big")
    value &= ((1 << length) - 1) << (width - length)
    return family((value, length))


def _roa(econtent: bytes) -> RouteOriginAttestation:
    roa = _strict(_schema.RouteOriginAttestation.load(econtent, strict=True), "ROA")
    if _int(roa["version"]) != 0:  # RFC 9582 §4.1
        raise malformed("ROA: version is not 0")
    prefixes: list[RoaIpAddress] = []
    for block in roa["ip_addr_blocks"]:
        _strict(block, "ROAIPAddressFamily")
        afi = _AFI.get(bytes(block["address_family"]))
        if afi is None:  # RFC 9582 §4.3.1: AFI 1 or 2, no SAFI
            raise RemoteProtocolError(Reason.OBJECT_BAD_RESOURCE, "ROA: bad addressFamily")
        width, family = afi
        for entry in block["addresses"]:
            address, max_length = entry["address"], entry["max_length"]  # every field
            _no_extra(entry, "ROAIPAddress")
            prefixes.append(
                RoaIpAddress(
                    _prefix(address, width, family),
                    None if isinstance(max_length, core.Void) else _int(max_length),
                )
            )
    return RouteOriginAttestation(as_id=_int(roa["as_id"]), prefixes=tuple(prefixes))


def _manifest(econtent: bytes) -> Manifest:
    mft = _strict(_schema.Manifest.load(econtent, strict=True), "Manifest")
    if _int(mft["version"]) != 0:  # RFC 9286 §4.2.1
        raise malformed("manifest: version is not 0")
    if str(mft["file_hash_alg"].dotted) != _OID_SHA256:  # RFC 9286 §4.2.1
        raise malformed("manifest: fileHashAlg is not SHA-256")
    return Manifest(
        manifest_number=_int(mft["manifest_number"]),
        this_update=_time(mft["this_update"]),
        next_update=_time(mft["next_update"]),
        files=tuple(_file_and_hash(_strict(entry, "FileAndHash")) for entry in mft["file_list"]),
    )


def _file_and_hash(entry: _Asn1) -> FileAndHash:
    file, digest = entry["file"], entry["hash"]  # every field
    _no_extra(entry, "FileAndHash")
    return FileAndHash(_ascii(file), _bits_as_bytes(digest))


def _aspa(econtent: bytes) -> AsProviderAttestation:
    aspa = _strict(_schema.AsProviderAttestation.load(econtent, strict=True), "ASPA")
    if _int(aspa["version"]) != 1:  # draft-ietf-sidrops-aspa-profile §3.1
        raise malformed("ASPA: version is not 1")
    return AsProviderAttestation(
        customer_asid=_int(aspa["customer_asid"]),
        providers=tuple(_int(p) for p in aspa["providers"]),
    )


_Content = Manifest | RouteOriginAttestation | AsProviderAttestation
_DECODERS: Final[dict[str, Callable[[bytes], _Content]]] = {
    OID_ROA: _roa,
    OID_MANIFEST: _manifest,
    OID_ASPA: _aspa,
}


def _signed_object(data: bytes, name: str | None, geofeed: bool) -> SignedObject:
    signed_data, etype, signer = _envelope(data)
    kind = ECONTENT_KINDS.get(etype, ObjectKind.UNKNOWN_SIGNED)
    if geofeed and kind is not ObjectKind.GEOFEED:
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_CONTENT_TYPE, "a geofeed signature block with another content type"
        )
    check_name(name, kind)
    signing_time = _signing_time(signer)
    ee = _ee_certificate(signed_data)
    with map_exceptions("CMS eContent"):
        econtent = _octets(signed_data["encap_content_info"]["content"])
    decoder = _DECODERS.get(etype)
    content: _Content | None = None
    if decoder is not None:
        if econtent is None:
            raise malformed(f"{kind.value}: no eContent")
        _content_der(econtent, kind.value)
        with map_exceptions(f"{kind.value} eContent"):
            content = decoder(econtent)
    return SignedObject(
        kind=kind,
        econtent_type=etype,
        signing_time=signing_time,
        ee_certificate=ee,
        content=content,
        detached=econtent is None,
    )


# --- public ---------------------------------------------------------------------------------------
def read_object(
    data: bytes, *, name: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> RpkiObject:
    """Read one RPKI object (certificate, CRL or CMS signed object) from DER or BER bytes.

    ``name`` (a file name or a path ending in one), when given, is checked against the content:
    a known extension that cannot hold the object's kind raises ``OBJECT_BAD_CONTENT_TYPE``; an
    unknown extension is not a claim.  Objects over ``limits.max_object_size`` raise
    :class:`~rpkirepo.errors.LimitExceeded`.  Every other refusal is a
    :class:`~rpkirepo.errors.RemoteProtocolError` with an ``OBJECT_*`` reason; nothing else is
    raised.  An unsigned CCR ContentInfo is refused (``OBJECT_NOT_SIGNED_DATA``): it is
    recognised (:func:`detect_kind` says CCR) but not modelled.
    """
    der, outer, geofeed = frame(data, limits.max_object_size)
    der.walk(outer)
    # The fast path's structural walk first: asn1crypto ignores a few things it should not (data
    # after the value inside an EXPLICIT tag), so the full reader is never the more lenient one.
    shape, _ = _classify(der, outer)
    if shape == "cms":
        return _signed_object(der.data, name, geofeed)
    if geofeed:
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_CONTENT_TYPE, "a geofeed signature block with another content type"
        )
    if shape == "crl":
        check_name(name, ObjectKind.CRL)
        return _crl(der.data)
    with map_exceptions("certificate"):
        cert = x509.Certificate.load(der.data, strict=True)
    result = _certificate(cert)
    check_name(name, result.kind)
    return result


def read_signing_time(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> datetime | None:
    """The CMS signing-time of a signed object, read with asn1crypto; None when absent.

    The slow twin of :func:`fast_signing_time` (same rules, independent walk), for cross-checks.
    Raises RpkiRepoError subclasses only.
    """
    der, outer, _ = frame(data, limits.max_object_size)
    kids = der.children(outer)
    if not kids or kids[0][0] != OID:
        raise RemoteProtocolError(Reason.OBJECT_NOT_SIGNED_DATA, "not a CMS ContentInfo")
    _, _, signer = _envelope(der.data)
    return _signing_time(signer)
