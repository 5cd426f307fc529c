"""The fast path: object kind, CMS signing-time and file mtime, with the TLV walker only.

Theory of operation.  Publishing 100k+ objects needs, for every new object, the time its file
should carry (RFC 9589 §3 and the publication-server BCP; rrdp-checklist §4).  Parsing the object
with asn1crypto costs about a millisecond; the walk here reads only the TLV headers on the path to
the one value it needs (tens of microseconds) and copies nothing but that value.

The rule, by what the bytes are (the content decides; see below for the file name):

=======================================  ==================================================
content                                  mtime (:class:`TimeSource`)
=======================================  ==================================================
CMS SignedData (.roa .mft .asa .gbr      CMS signing-time (RFC 9589 §3; RFC 5652 §11.3);
.tak .spl .sig, and any other            without one, or with an unusable one, the EE
eContentType, geofeed signatures too)    certificate's notBefore (EE_NOT_BEFORE)
certificate (.cer)                       notBefore (CERT_NOT_BEFORE; RFC 5280 §4.1.2.5)
CRL (.crl)                               thisUpdate (CRL_THIS_UPDATE; RFC 5280 §5.1.2.4)
anything else                            NONE, seconds = -1, with a reason code
=======================================  ==================================================

The file name.  The extension table of the checklist and the content agree for every well-formed
repository; when they disagree (``x.cer`` holding a CRL) or the extension is unknown (``.der``,
no extension), the rule for the *content* is applied, since the rule for the name cannot be (a
CRL has no notBefore).  A disagreement is reported as ``reason=OBJECT_BAD_CONTENT_TYPE`` on an
otherwise normal result, unless a fallback reason (``OBJECT_NO_SIGNING_TIME``,
``OBJECT_BAD_TIME``) already occupies the field.

Times before 1970 are not RPKI times: a signing-time before the epoch counts as unusable
(fallback to the EE notBefore) and a notBefore/thisUpdate before it gives NONE, so a result
with ``source != NONE`` always has ``seconds >= 0``.

Only a *signed* signing-time attribute counts (RFC 9589 §3 and its update to RFC 6488 §2.1.6.4);
one carried as an unsigned attribute is ignored, so the EE notBefore is used.

:func:`mtime_of` never raises: every failure becomes ``source=NONE`` with a reason, and the caller
applies its own fallback.  :func:`fast_signing_time` and :func:`detect_kind` raise
:class:`~rpkirepo.errors.RpkiRepoError` subclasses only.  They walk the CMS envelope with the
structural rules of the asn1crypto reader (fields in order, required ones present, nothing left
over, exactly one SignerInfo, at most one signing-time attribute with exactly one value): on every
corpus file the two give the same answer, and on malformed input the walk here is the stricter
one (asn1crypto ignores bytes after the value inside an EXPLICIT tag), which is why
:func:`~rpkirepo.objects.read_object` runs it first.  The tests check both on the corpus and on
fuzzed input.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS, Limits

from ._der import (
    BIT_STRING,
    BOOLEAN,
    CTX0,
    CTX0_PRIMITIVE,
    CTX1,
    CTX3,
    GENERALIZED_TIME,
    INTEGER,
    OCTET_STRING,
    OID,
    SEQUENCE,
    SET,
    UTC_TIME,
    Der,
    Tlv,
    encode_oid,
    malformed,
)
from ._framing import frame
from ._kinds import (
    ECONTENT_KINDS,
    EXTENSION_KINDS,
    OID_CCR,
    OID_SIGNED_DATA,
    ObjectKind,
    check_name,
    extension_of,
)
from ._time import decode_time

__all__ = ["ObjectTime", "TimeSource", "detect_kind", "fast_signing_time", "mtime_of"]


class TimeSource(StrEnum):
    """Where :func:`mtime_of` took the time from."""

    SIGNING_TIME = "signing-time"
    EE_NOT_BEFORE = "ee-not-before"
    CERT_NOT_BEFORE = "cert-not-before"
    CRL_THIS_UPDATE = "crl-this-update"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ObjectTime:
    """The file mtime an object should carry (RFC 9589 §3), and where it came from.

    ``seconds`` is POSIX time, >= 0, unless ``source`` is NONE: then it is -1 and ``reason`` says
    why.  With another source, ``reason`` is None, or says why a fallback or the content's rule
    was used (see the module documentation).
    """

    seconds: int
    source: TimeSource
    reason: Reason | None = None

    def __post_init__(self) -> None:
        if self.source is TimeSource.NONE:
            if self.seconds != -1 or self.reason is None:
                raise ValueError("ObjectTime: NONE needs seconds=-1 and a reason")
        elif self.seconds < 0:
            raise ValueError("ObjectTime: a time source needs seconds >= 0")


# --- raw OIDs (contents octets) -------------------------------------------------------------------
_RAW_SIGNED_DATA: Final = encode_oid(OID_SIGNED_DATA)
_RAW_CCR: Final = encode_oid(OID_CCR)
_RAW_SIGNING_TIME: Final = encode_oid("1.2.840.113549.1.9.5")  # RFC 5652 §11.3
_RAW_BASIC_CONSTRAINTS: Final = encode_oid("2.5.29.19")  # RFC 5280 §4.2.1.9
_RAW_EKU: Final = encode_oid("2.5.29.37")  # RFC 5280 §4.2.1.12
_RAW_SKI: Final = encode_oid("2.5.29.14")  # RFC 5280 §4.2.1.2
_RAW_AKI: Final = encode_oid("2.5.29.35")  # RFC 5280 §4.2.1.1
_RAW_BGPSEC_ROUTER: Final = encode_oid("1.3.6.1.5.5.7.3.30")  # RFC 8209 §3.1.3.2
_RAW_ECONTENT_KINDS: Final = {encode_oid(k): v for k, v in ECONTENT_KINDS.items()}
#: The extensions that decide a certificate's kind.
_KIND_EXTENSIONS: Final = frozenset({_RAW_BASIC_CONSTRAINTS, _RAW_EKU, _RAW_SKI, _RAW_AKI})

_TIMES: Final = (UTC_TIME, GENERALIZED_TIME)
_OCTETS: Final = (OCTET_STRING, OCTET_STRING | 0x20)

# Field specs: (allowed tags, optional).  Matched in order like a schema-driven parser would.
_Spec = tuple[tuple[tuple[int, ...], bool], ...]
_CONTENT_INFO: Final[_Spec] = (((OID,), False), ((CTX0,), True))  # RFC 5652 §3
_SIGNED_DATA: Final[_Spec] = (  # RFC 5652 §5.1
    ((INTEGER,), False),  # version
    ((SET,), False),  # digestAlgorithms
    ((SEQUENCE,), False),  # encapContentInfo
    ((CTX0,), True),  # certificates [0] IMPLICIT
    ((CTX1,), True),  # crls [1] IMPLICIT
    ((SET,), False),  # signerInfos
)
_ENCAP: Final[_Spec] = (((OID,), False), ((CTX0,), True))  # RFC 5652 §5.2
_SIGNER_INFO: Final[_Spec] = (  # RFC 5652 §5.3
    ((INTEGER,), False),  # version
    ((SEQUENCE, CTX0_PRIMITIVE), False),  # sid: issuerAndSerialNumber | [0] SKI
    ((SEQUENCE,), False),  # digestAlgorithm
    ((CTX0,), True),  # signedAttrs [0] IMPLICIT
    ((SEQUENCE,), False),  # signatureAlgorithm
    (_OCTETS, False),  # signature
    ((CTX1,), True),  # unsignedAttrs [1] IMPLICIT
)
_CERTIFICATE: Final[_Spec] = (  # RFC 5280 §4.1
    ((SEQUENCE,), False),  # tbsCertificate / tbsCertList
    ((SEQUENCE,), False),  # signatureAlgorithm
    ((BIT_STRING,), False),  # signatureValue
)
_TBS_CERTIFICATE: Final[_Spec] = (  # RFC 5280 §4.1.2
    ((CTX0,), True),  # version [0] EXPLICIT
    ((INTEGER,), False),  # serialNumber
    ((SEQUENCE,), False),  # signature
    ((SEQUENCE,), False),  # issuer
    ((SEQUENCE,), False),  # validity
    ((SEQUENCE,), False),  # subject
    ((SEQUENCE,), False),  # subjectPublicKeyInfo
    ((0x81,), True),  # issuerUniqueID [1] IMPLICIT
    ((0x82,), True),  # subjectUniqueID [2] IMPLICIT
    ((CTX3,), True),  # extensions [3] EXPLICIT
)
_TBS_CERT_LIST: Final[_Spec] = (  # RFC 5280 §5.1.2
    ((INTEGER,), True),  # version
    ((SEQUENCE,), False),  # signature
    ((SEQUENCE,), False),  # issuer
    (_TIMES, False),  # thisUpdate
    (_TIMES, True),  # nextUpdate
    ((SEQUENCE,), True),  # revokedCertificates
    ((CTX0,), True),  # crlExtensions [0] EXPLICIT
)
_VALIDITY: Final[_Spec] = ((_TIMES, False), (_TIMES, False))  # RFC 5280 §4.1.2.5
_EXTENSION: Final[_Spec] = (((OID,), False), ((BOOLEAN,), True), (_OCTETS, False))  # §4.1


def _match(kids: list[Tlv], spec: _Spec, what: str) -> list[Tlv | None]:
    """Match ``kids`` to ``spec`` in order, like a schema-driven parser; None for an absent
    optional field.  A missing required field or a left-over value is an error."""
    out: list[Tlv | None] = []
    i = 0
    n = len(kids)
    for tags, optional in spec:
        if i < n and kids[i][0] in tags:
            out.append(kids[i])
            i += 1
        elif optional:
            out.append(None)
        else:
            raise malformed(f"{what}: a required field is missing or has the wrong type")
    if i != n:
        raise malformed(f"{what}: unexpected field")
    return out


def _fields(der: Der, tlv: Tlv, spec: _Spec, what: str) -> list[Tlv | None]:
    return _match(der.children(tlv), spec, what)


def _only_child(der: Der, tlv: Tlv, tags: tuple[int, ...], what: str) -> Tlv:
    kids = der.children(tlv)
    if len(kids) != 1 or kids[0][0] not in tags:
        raise malformed(f"{what}: expected exactly one value of the right type")
    return kids[0]


# --- CMS (RFC 5652, profiled by RFC 6488) ---------------------------------------------------------
class _Cms:
    """The parts of a SignedData envelope the fast path uses (walked, not decoded)."""

    __slots__ = ("certificates", "econtent_type", "signed_attrs")

    def __init__(self, der: Der, content_info: list[Tlv | None]) -> None:
        oid, content = content_info
        assert oid is not None  # required by _CONTENT_INFO
        if der.raw(oid) != _RAW_SIGNED_DATA:
            detail = "an unsigned CCR" if der.raw(oid) == _RAW_CCR else "another contentType"
            raise RemoteProtocolError(Reason.OBJECT_NOT_SIGNED_DATA, f"not SignedData: {detail}")
        if content is None:
            raise malformed("ContentInfo: no content")
        signed_data = _only_child(der, content, (SEQUENCE,), "ContentInfo.content")
        _, _, encap, certificates, _, signer_infos = _fields(
            der, signed_data, _SIGNED_DATA, "SignedData"
        )
        assert encap is not None and signer_infos is not None
        etype, econtent = _fields(der, encap, _ENCAP, "EncapsulatedContentInfo")
        assert etype is not None
        if econtent is not None:
            _only_child(der, econtent, _OCTETS, "eContent")
        infos = der.children(signer_infos)
        # RFC 6488 §2.1: signerInfos holds exactly one SignerInfo.
        if len(infos) != 1 or infos[0][0] != SEQUENCE:
            raise malformed("SignedData: not exactly one SignerInfo (RFC 6488 §2.1)")
        signer = _fields(der, infos[0], _SIGNER_INFO, "SignerInfo")
        self.econtent_type: bytes = der.raw(etype)
        self.certificates: Tlv | None = certificates
        self.signed_attrs: Tlv | None = signer[3]


def _signing_time(der: Der, signed_attrs: Tlv | None) -> int | None:
    """RFC 5652 §11.3 signing-time from signedAttrs: None when absent; one attribute, one value."""
    if signed_attrs is None:
        return None
    found: Tlv | None = None
    for attr in der.children(signed_attrs):
        # Attribute ::= SEQUENCE { attrType OID, attrValues SET OF } (inlined _ATTRIBUTE match)
        kids = der.children(attr) if attr[0] == SEQUENCE else ()
        if len(kids) != 2 or kids[0][0] != OID or kids[1][0] != SET:
            raise malformed("signedAttrs: an attribute is not SEQUENCE { OID, SET }")
        oid, values = kids
        if der.raw(oid) == _RAW_SIGNING_TIME:
            if found is not None:
                raise RemoteProtocolError(
                    Reason.OBJECT_BAD_TIME, "more than one signing-time attribute"
                )
            found = values
    if found is None:
        return None
    kids = der.children(found)
    if len(kids) != 1:
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_TIME, "signing-time attribute does not hold exactly one value"
        )
    return decode_time(kids[0][0], der.raw(kids[0]))


def _ee_not_before(der: Der, certificates: Tlv | None) -> int:
    """notBefore of the one certificate in a SignedData (RFC 6488 §2.1.4)."""
    if certificates is None:
        raise malformed("SignedData: no certificates")
    certs = der.children(certificates)
    if len(certs) != 1 or certs[0][0] != SEQUENCE:
        raise malformed("SignedData: not exactly one EE certificate (RFC 6488 §2.1.4)")
    tbs = _fields(der, certs[0], _CERTIFICATE, "Certificate")[0]
    assert tbs is not None
    return _cert_not_before(der, tbs)


# --- certificates and CRLs (RFC 5280 §4.1, §5.1) --------------------------------------------------
def _is_crl_tbs(der: Der, tbs: Tlv) -> bool:
    """Tell a TBSCertList from a TBSCertificate by the value after issuer (time vs validity)."""
    kids = der.children(tbs)
    i = 0
    while i < len(kids) and kids[i][0] in (INTEGER, CTX0):
        i += 1
    if i + 2 < len(kids):
        tag = kids[i + 2][0]
        if tag in _TIMES:
            return True
        if tag == SEQUENCE:
            return False
    raise malformed("neither a certificate nor a CRL")


def _cert_not_before(der: Der, tbs: Tlv) -> int:
    validity = _fields(der, tbs, _TBS_CERTIFICATE, "TBSCertificate")[4]
    assert validity is not None
    not_before = _fields(der, validity, _VALIDITY, "Validity")[0]
    assert not_before is not None
    return decode_time(not_before[0], der.raw(not_before))


def _crl_this_update(der: Der, tbs: Tlv) -> int:
    this_update = _fields(der, tbs, _TBS_CERT_LIST, "TBSCertList")[3]
    assert this_update is not None
    return decode_time(this_update[0], der.raw(this_update))


def _inner(value: bytes) -> tuple[Der, Tlv]:
    """The single TLV an extension's OCTET STRING wraps."""
    inner = Der(value)
    tlv = inner.tlv(0, len(value))
    if tlv[3] != len(value):
        raise RemoteProtocolError(Reason.OBJECT_TRAILING_DATA, "bytes after an extension value")
    return inner, tlv


def _certificate_kind(der: Der, tbs: Tlv) -> ObjectKind:
    """TA / CA / router / EE, by the rules in :mod:`rpkirepo.objects._kinds`."""
    fields = _fields(der, tbs, _TBS_CERTIFICATE, "TBSCertificate")
    issuer, subject, extensions = fields[3], fields[5], fields[9]
    assert issuer is not None and subject is not None
    is_ca = False
    router = False
    ski: bytes | None = None
    aki: bytes | None = None
    if extensions is not None:
        seen: set[bytes] = set()
        for ext in der.children(_only_child(der, extensions, (SEQUENCE,), "extensions")):
            if ext[0] != SEQUENCE:
                raise malformed("Extensions: an extension is not a SEQUENCE")
            oid_tlv, _, value_tlv = _fields(der, ext, _EXTENSION, "Extension")
            assert oid_tlv is not None and value_tlv is not None
            oid = der.raw(oid_tlv)
            if oid in seen:  # RFC 5280 §4.2: at most one instance of an extension
                raise malformed("duplicate certificate extension")
            seen.add(oid)
            if oid not in _KIND_EXTENSIONS:
                continue
            value, inner = _inner(der.string(value_tlv))
            if oid == _RAW_BASIC_CONSTRAINTS:  # SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }
                if inner[0] != SEQUENCE:
                    raise malformed("basicConstraints is not a SEQUENCE")
                kids = value.children(inner)
                is_ca = bool(kids) and kids[0][0] == BOOLEAN and value.raw(kids[0]) != b"\x00"
            elif oid == _RAW_EKU:  # SEQUENCE OF KeyPurposeId
                if inner[0] != SEQUENCE:
                    raise malformed("extKeyUsage is not a SEQUENCE")
                router = any(
                    k[0] == OID and value.raw(k) == _RAW_BGPSEC_ROUTER
                    for k in value.children(inner)
                )
            elif oid == _RAW_SKI:  # KeyIdentifier ::= OCTET STRING
                if inner[0] not in _OCTETS:
                    raise malformed("subjectKeyIdentifier is not an OCTET STRING")
                ski = value.string(inner)
            else:  # AKI: SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING OPTIONAL, ... }
                if inner[0] != SEQUENCE:
                    raise malformed("authorityKeyIdentifier is not a SEQUENCE")
                for k in value.children(inner):
                    if k[0] in (CTX0_PRIMITIVE, CTX0):
                        aki = value.string(k)
    if is_ca:
        self_signed = der.raw(issuer) == der.raw(subject) and (aki is None or aki == ski)
        return ObjectKind.TA_CERTIFICATE if self_signed else ObjectKind.CA_CERTIFICATE
    return ObjectKind.ROUTER_CERTIFICATE if router else ObjectKind.EE_CERTIFICATE


# --- shapes ---------------------------------------------------------------------------------------
def _classify(der: Der, outer: Tlv) -> tuple[str, Tlv | _Cms]:
    """("cms", envelope) for ContentInfo, ("crl", tbs) or ("cert", tbs) for the X.509 shapes."""
    kids = der.children(outer)
    if kids and kids[0][0] == OID:  # ContentInfo (RFC 5652 §3)
        return "cms", _Cms(der, _match(kids, _CONTENT_INFO, "ContentInfo"))
    if kids and kids[0][0] == SEQUENCE:  # Certificate (RFC 5280 §4.1) / CertificateList (§5.1)
        tbs = _match(kids, _CERTIFICATE, "Certificate")[0]
        assert tbs is not None
        return ("crl" if _is_crl_tbs(der, tbs) else "cert"), tbs
    raise RemoteProtocolError(Reason.OBJECT_UNKNOWN_TYPE, "not a certificate, CRL or CMS")


# --- public functions -----------------------------------------------------------------------------
def fast_signing_time(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> int | None:
    """The CMS signing-time of a signed object as POSIX seconds; None when it has none.

    Raises :class:`~rpkirepo.errors.RpkiRepoError` (``OBJECT_NOT_SIGNED_DATA`` for anything that
    is not CMS SignedData, ``OBJECT_BAD_TIME``, ``OBJECT_MALFORMED``, ...) and nothing else.
    """
    der, outer, _ = frame(data, limits.max_object_size)
    what, part = _classify(der, outer)
    if not isinstance(part, _Cms):
        raise RemoteProtocolError(Reason.OBJECT_NOT_SIGNED_DATA, f"a {what}, not CMS")
    return _signing_time(der, part.signed_attrs)


def detect_kind(
    data: bytes, *, name: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> ObjectKind:
    """The :class:`ObjectKind` of ``data``, decided by content with the fast walker.

    With ``name``, an extension that cannot hold that kind (``x.roa`` holding a manifest) is an
    error (``OBJECT_BAD_CONTENT_TYPE``).  An unsigned CCR ContentInfo is :attr:`ObjectKind.CCR`.
    Raises RpkiRepoError subclasses only.
    """
    der, outer, geofeed = frame(data, limits.max_object_size)
    try:
        what, part = _classify(der, outer)
    except RpkiRepoError as exc:
        if exc.reason is Reason.OBJECT_NOT_SIGNED_DATA and _is_ccr(der, outer):
            check_name(name, ObjectKind.CCR)
            return ObjectKind.CCR
        raise
    if isinstance(part, _Cms):
        kind = _RAW_ECONTENT_KINDS.get(part.econtent_type, ObjectKind.UNKNOWN_SIGNED)
    elif what == "crl":
        _crl_this_update(der, part)  # the shape checks the full reader makes too
        kind = ObjectKind.CRL
    else:
        kind = _certificate_kind(der, part)
    if geofeed and kind is not ObjectKind.GEOFEED:
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_CONTENT_TYPE, "a geofeed signature block with another content type"
        )
    check_name(name, kind)
    return kind


def _is_ccr(der: Der, outer: Tlv) -> bool:
    return der.raw(der.children(outer)[0]) == _RAW_CCR


def _mtime(data: bytes, name: str, limits: Limits) -> ObjectTime:
    """mtime_of without the last-resort handler: raises RpkiRepoError subclasses only."""
    der, outer, _ = frame(data, limits.max_object_size)
    allowed = EXTENSION_KINDS.get(extension_of(name))
    what, part = _classify(der, outer)
    if isinstance(part, _Cms):
        kind = _RAW_ECONTENT_KINDS.get(part.econtent_type, ObjectKind.UNKNOWN_SIGNED)
        mismatch = allowed is not None and kind not in allowed
        fallback: Reason
        try:
            seconds = _signing_time(der, part.signed_attrs)
        except RpkiRepoError as exc:
            if exc.reason is not Reason.OBJECT_BAD_TIME:
                raise
            fallback = Reason.OBJECT_BAD_TIME
        else:
            if seconds is not None and seconds >= 0:  # RFC 9589 §3
                return ObjectTime(
                    seconds,
                    TimeSource.SIGNING_TIME,
                    Reason.OBJECT_BAD_CONTENT_TYPE if mismatch else None,
                )
            fallback = Reason.OBJECT_NO_SIGNING_TIME if seconds is None else Reason.OBJECT_BAD_TIME
        seconds = _ee_not_before(der, part.certificates)
        source = TimeSource.EE_NOT_BEFORE
        reason: Reason | None = fallback
    elif what == "crl":
        seconds, source = _crl_this_update(der, part), TimeSource.CRL_THIS_UPDATE
        mismatch = allowed is not None and ObjectKind.CRL not in allowed
        reason = Reason.OBJECT_BAD_CONTENT_TYPE if mismatch else None
    else:
        seconds, source = _cert_not_before(der, part), TimeSource.CERT_NOT_BEFORE
        mismatch = allowed is not None and ObjectKind.CA_CERTIFICATE not in allowed
        reason = Reason.OBJECT_BAD_CONTENT_TYPE if mismatch else None
    if seconds < 0:
        raise RemoteProtocolError(Reason.OBJECT_BAD_TIME, "a time before 1970")
    return ObjectTime(seconds, source, reason)


def mtime_of(data: bytes, name: str, *, limits: Limits = DEFAULT_LIMITS) -> ObjectTime:
    """The file mtime for an object (RFC 9589 §3; rrdp-checklist §4).  Never raises.

    ``name`` is the file name or a relative path ending in it; only its extension is used.  See
    the module documentation for the rule, the fallbacks and what happens when the extension and
    the content disagree.  On any failure the result is ``ObjectTime(-1, TimeSource.NONE,
    reason)`` and the caller applies its documented fallback.
    """
    try:
        return _mtime(data, name, limits)
    except RpkiRepoError as exc:
        return ObjectTime(-1, TimeSource.NONE, exc.reason)
    except Exception:  # last resort: the contract is "never raises"; the fuzz tests hunt these
        return ObjectTime(-1, TimeSource.NONE, Reason.OBJECT_MALFORMED)
