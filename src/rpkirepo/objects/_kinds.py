"""What kind of RPKI object a file is: the object identifiers, the kinds, and the file names.

Kinds are decided by content, never by name alone:

* a certificate (RFC 6487 §4) is a TA certificate when it is a CA certificate whose issuer equals
  its subject and whose AKI, if present, equals its SKI (RFC 6487 §4.8.3: a self-signed
  certificate; the signature itself is not verified here); a CA certificate when basicConstraints
  says ``cA``; a BGPsec router certificate when an EE certificate carries the extended key usage
  id-kp-bgpsec-router (RFC 8209 §3.1.3.2); any other certificate is an EE certificate;
* a CRL (RFC 6487 §5) is told from a certificate by its TBS shape (thisUpdate where a certificate
  has its validity SEQUENCE);
* a CMS SignedData object (RFC 6488) by its eContentType, in :data:`ECONTENT_KINDS`;
  SignedData with any other eContentType is :attr:`ObjectKind.UNKNOWN_SIGNED`;
* an unsigned ContentInfo whose contentType is CCR (draft-ietf-sidrops-rpki-ccr) is
  :attr:`ObjectKind.CCR`; it is recognised but not modelled (read_object refuses it).

The file name extension (RFC 6481 §2.1 and the documents of the later object types) is a claim
that :func:`name_allows` checks against the content; an unknown extension claims nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

__all__ = [
    "ECONTENT_KINDS",
    "EXTENSION_KINDS",
    "OID_ASPA",
    "OID_CCR",
    "OID_GBR",
    "OID_GEOFEED",
    "OID_MANIFEST",
    "OID_PROTOCOL_XML",
    "OID_ROA",
    "OID_RSC",
    "OID_SIGNED_DATA",
    "OID_SPL",
    "OID_TAK",
    "ObjectKind",
    "check_name",
    "extension_of",
    "name_allows",
]


class ObjectKind(StrEnum):
    """The kinds of object the reader tells apart.  Values are stable strings."""

    # --- certificates (RFC 6487 §4, RFC 8209) ---
    TA_CERTIFICATE = "ta-certificate"
    CA_CERTIFICATE = "ca-certificate"
    EE_CERTIFICATE = "ee-certificate"
    ROUTER_CERTIFICATE = "router-certificate"
    # --- CRL (RFC 6487 §5) ---
    CRL = "crl"
    # --- signed objects (RFC 6488), by eContentType ---
    MANIFEST = "manifest"
    ROA = "roa"
    ASPA = "aspa"
    GBR = "gbr"
    SIGNED_PREFIX_LIST = "signed-prefix-list"
    TAK = "tak"
    RSC = "rsc"
    #: RFC 9632 geofeed signature (detached CMS; also found inside a geofeed CSV file).
    GEOFEED = "geofeed"
    #: RFC 6492 / RFC 8181 protocol message (id-ct-xml): real CMS, not a repository object.
    PROTOCOL_MESSAGE = "protocol-message"
    #: SignedData whose eContentType is none of the above.
    UNKNOWN_SIGNED = "unknown-signed"
    #: draft-ietf-sidrops-rpki-ccr: an unsigned ContentInfo (recognised, not modelled).
    CCR = "ccr"

    @property
    def is_certificate(self) -> bool:
        return self in _CERTIFICATE_KINDS

    @property
    def is_signed_object(self) -> bool:
        return self in _SIGNED_KINDS


_CERTIFICATE_KINDS: Final = frozenset(
    {
        ObjectKind.TA_CERTIFICATE,
        ObjectKind.CA_CERTIFICATE,
        ObjectKind.EE_CERTIFICATE,
        ObjectKind.ROUTER_CERTIFICATE,
    }
)

#: id-signedData, RFC 5652 §5.1.
OID_SIGNED_DATA: Final = "1.2.840.113549.1.7.2"
#: id-ct-routeOriginAuthz, RFC 6482 §3 / RFC 9582 §4.
OID_ROA: Final = "1.2.840.113549.1.9.16.1.24"
#: id-ct-rpkiManifest, RFC 9286 §4.1.
OID_MANIFEST: Final = "1.2.840.113549.1.9.16.1.26"
#: id-ct-xml, RFC 6492 §3.1 / RFC 8181 §3.1 (protocol messages).
OID_PROTOCOL_XML: Final = "1.2.840.113549.1.9.16.1.28"
#: id-ct-rpkiGhostbusters, RFC 6493 §6.
OID_GBR: Final = "1.2.840.113549.1.9.16.1.35"
#: id-ct-geofeedCSVwithCRLF, RFC 9632 §5.
OID_GEOFEED: Final = "1.2.840.113549.1.9.16.1.47"
#: id-ct-signedChecklist, RFC 9323 §4.
OID_RSC: Final = "1.2.840.113549.1.9.16.1.48"
#: id-ct-ASPA, draft-ietf-sidrops-aspa-profile §2.
OID_ASPA: Final = "1.2.840.113549.1.9.16.1.49"
#: id-ct-signedTAL, RFC 9691 §3.
OID_TAK: Final = "1.2.840.113549.1.9.16.1.50"
#: id-ct-signedPrefixList, draft-ietf-sidrops-rpki-prefixlist §3.
OID_SPL: Final = "1.2.840.113549.1.9.16.1.51"
#: id-ct-rpkiCanonicalCacheRepresentation, draft-ietf-sidrops-rpki-ccr.
OID_CCR: Final = "1.2.840.113549.1.9.16.1.54"

#: eContentType (dotted OID) -> kind, for SignedData objects.
ECONTENT_KINDS: Final[dict[str, ObjectKind]] = {
    OID_ROA: ObjectKind.ROA,
    OID_MANIFEST: ObjectKind.MANIFEST,
    OID_PROTOCOL_XML: ObjectKind.PROTOCOL_MESSAGE,
    OID_GBR: ObjectKind.GBR,
    OID_GEOFEED: ObjectKind.GEOFEED,
    OID_RSC: ObjectKind.RSC,
    OID_ASPA: ObjectKind.ASPA,
    OID_TAK: ObjectKind.TAK,
    OID_SPL: ObjectKind.SIGNED_PREFIX_LIST,
}

_SIGNED_KINDS: Final = frozenset({*ECONTENT_KINDS.values(), ObjectKind.UNKNOWN_SIGNED})

#: File name extension (lower case, with the dot) -> the kinds such a file may hold.
#: RFC 6481 §2.1 (.cer .crl .mft .roa), RFC 6493 (.gbr), RFC 9323 (.sig), RFC 9691 (.tak),
#: ASPA profile (.asa), signed prefix list (.spl), CCR (.ccr).
EXTENSION_KINDS: Final[dict[str, frozenset[ObjectKind]]] = {
    ".cer": _CERTIFICATE_KINDS,
    ".crl": frozenset({ObjectKind.CRL}),
    ".mft": frozenset({ObjectKind.MANIFEST}),
    ".roa": frozenset({ObjectKind.ROA}),
    ".asa": frozenset({ObjectKind.ASPA}),
    ".gbr": frozenset({ObjectKind.GBR}),
    ".spl": frozenset({ObjectKind.SIGNED_PREFIX_LIST}),
    ".tak": frozenset({ObjectKind.TAK}),
    ".sig": frozenset({ObjectKind.RSC}),
    ".ccr": frozenset({ObjectKind.CCR}),
}


def extension_of(name: str) -> str:
    """The lower-cased extension (``".roa"``) of the last path segment of ``name``, or ``""``."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def name_allows(name: str | None, kind: ObjectKind) -> bool:
    """Whether a file called ``name`` may hold an object of ``kind``.

    True when ``name`` is None or its extension is not one of :data:`EXTENSION_KINDS` (an
    unknown extension claims nothing).  Extensions compare case-insensitively.
    """
    if name is None:
        return True
    allowed = EXTENSION_KINDS.get(extension_of(name))
    return allowed is None or kind in allowed


def check_name(name: str | None, kind: ObjectKind) -> None:
    """Raise ``OBJECT_BAD_CONTENT_TYPE`` when a file called ``name`` may not hold ``kind``."""
    if not name_allows(name, kind):
        assert name is not None
        raise RemoteProtocolError(
            Reason.OBJECT_BAD_CONTENT_TYPE,
            f"a {extension_of(name)} file holds a {kind.value}",
            name=name,
        )
