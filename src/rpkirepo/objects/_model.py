"""The typed values the reader returns: frozen, slotted, validated on construction.

Three object shapes, one per ASN.1 outer type, each carrying its :class:`ObjectKind`:

* :class:`Certificate` -- a resource certificate (RFC 6487 §4; RFC 8209 for router certificates);
* :class:`Crl` -- a CRL (RFC 6487 §5);
* :class:`SignedObject` -- a CMS signed object (RFC 6488) with its EE certificate and, for the
  types the reader decodes, its eContent: :class:`Manifest` (RFC 9286),
  :class:`RouteOriginAttestation` (RFC 6482 / RFC 9582) or :class:`AsProviderAttestation`
  (draft-ietf-sidrops-aspa-profile).

:data:`RpkiObject` is their union.  Times are timezone-aware UTC datetimes; URIs are the raw
strings the object carries (validate them with :mod:`rpkirepo.uri` before using them as paths).
Construction validates what a holder relies on (ranges, lengths, safe file names), raising
:class:`~rpkirepo.errors.RemoteProtocolError`, since the values come from untrusted objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

from ._kinds import ObjectKind

__all__ = [
    "AsProviderAttestation",
    "Certificate",
    "Crl",
    "FileAndHash",
    "Manifest",
    "RoaIpAddress",
    "RouteOriginAttestation",
    "RpkiObject",
    "SignedObject",
]

#: ASID ::= INTEGER (0..4294967295) (RFC 3779 §3.2.3.10).
MAX_ASID: Final = 2**32 - 1
_SHA256_LEN: Final = 32


def _require(ok: bool, reason: Reason, detail: str) -> None:
    if not ok:
        raise RemoteProtocolError(reason, detail)


def _check_aware(*times: datetime | None) -> None:
    for t in times:
        if t is not None and t.utcoffset() is None:
            raise ValueError("times must be timezone-aware")


def _check_asid(asid: int, what: str) -> None:
    _require(0 <= asid <= MAX_ASID, Reason.OBJECT_BAD_RESOURCE, f"{what} out of range")


# ---- Certificate ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Certificate:
    """A resource certificate (RFC 6487 §4), or the EE certificate inside a signed object."""

    #: TA, CA, EE or router certificate (see :mod:`rpkirepo.objects` for the rules).
    kind: ObjectKind
    #: serialNumber (RFC 5280 §4.1.2.2).
    serial: int
    #: validity.notBefore / notAfter (RFC 5280 §4.1.2.5).
    not_before: datetime
    not_after: datetime
    #: subjectKeyIdentifier / authorityKeyIdentifier.keyIdentifier (RFC 6487 §4.8.2, §4.8.3).
    subject_key_identifier: bytes | None
    authority_key_identifier: bytes | None
    #: SIA id-ad-caRepository (RFC 6487 §4.8.8.1): the CA's publication point directory.
    ca_repository: tuple[str, ...]
    #: SIA id-ad-rpkiManifest (RFC 6487 §4.8.8.1).
    rpki_manifest: tuple[str, ...]
    #: SIA id-ad-rpkiNotify (RFC 8182 §3.2): the RRDP notification URI.
    rpki_notify: tuple[str, ...]
    #: SIA id-ad-signedObject (RFC 6487 §4.8.8.2): where an EE certificate's object lives.
    signed_object: tuple[str, ...]
    #: AIA id-ad-caIssuers (RFC 6487 §4.8.7): the issuer's certificate.
    ca_issuers: tuple[str, ...]
    #: CRL distribution point fullName URIs (RFC 6487 §4.8.6).
    crl_distribution_points: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.kind.is_certificate:
            raise ValueError(f"{self.kind} is not a certificate kind")
        _check_aware(self.not_before, self.not_after)


# ---- CRL -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Crl:
    """A CRL (RFC 6487 §5; RFC 5280 §5.1)."""

    #: thisUpdate / nextUpdate (RFC 5280 §5.1.2.4, §5.1.2.5; RFC 6487 §5 makes nextUpdate
    #: mandatory, the reader tolerates its absence).
    this_update: datetime
    next_update: datetime | None
    #: cRLNumber (RFC 5280 §5.2.3), when present.
    crl_number: int | None
    #: authorityKeyIdentifier.keyIdentifier (RFC 6487 §5), when present.
    authority_key_identifier: bytes | None
    #: userCertificate serial numbers of revokedCertificates, in order.
    revoked_serials: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_aware(self.this_update, self.next_update)

    @property
    def kind(self) -> ObjectKind:
        return ObjectKind.CRL


# ---- Manifest (RFC 9286) -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileAndHash:
    """One manifest entry (RFC 9286 §4.2.1): a file name in the publication point, its SHA-256.

    The name is checked to be a safe single path segment (printable ASCII, no ``/``, not ``.`` or
    ``..``); RFC 9286 §4.2.2's narrower character set is not enforced.
    """

    file: str
    hash: bytes

    def __post_init__(self) -> None:
        name = self.file
        _require(
            bool(name)
            and name not in (".", "..")
            and "/" not in name
            and all(0x21 <= ord(c) <= 0x7E for c in name),
            Reason.OBJECT_MALFORMED,
            "manifest: a file name is not a safe path segment",
        )
        _require(
            len(self.hash) == _SHA256_LEN,
            Reason.OBJECT_MALFORMED,
            "manifest: a hash is not 32 bytes (RFC 9286 §4.2.1, SHA-256)",
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """The eContent of a manifest (RFC 9286 §4.2)."""

    #: manifestNumber: a non-negative integer of any size (RFC 9286 §4.2.1 caps it at 20 octets;
    #: the reader does not).
    manifest_number: int
    this_update: datetime
    next_update: datetime
    files: tuple[FileAndHash, ...]

    def __post_init__(self) -> None:
        _require(
            self.manifest_number >= 0,
            Reason.OBJECT_MALFORMED,
            "manifest: negative manifestNumber (RFC 9286 §4.2.1)",
        )
        _check_aware(self.this_update, self.next_update)


# ---- ROA (RFC 6482 / RFC 9582) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RoaIpAddress:
    """One ROAIPAddress (RFC 9582 §4.3.3): a prefix and its maxLength (None when absent)."""

    prefix: IPv4Network | IPv6Network
    max_length: int | None = None

    def __post_init__(self) -> None:
        length = self.max_length
        if length is not None and not (
            self.prefix.prefixlen <= length <= self.prefix.max_prefixlen
        ):
            raise RemoteProtocolError(
                Reason.OBJECT_BAD_RESOURCE,
                f"ROA: maxLength {length} invalid for {self.prefix} (RFC 9582 §4.3.3)",
            )

    @property
    def effective_max_length(self) -> int:
        """maxLength, or the prefix length when maxLength is absent (RFC 9582 §4.3.3)."""
        return self.prefix.prefixlen if self.max_length is None else self.max_length


@dataclass(frozen=True, slots=True)
class RouteOriginAttestation:
    """The eContent of a ROA (RFC 9582 §4): the origin AS and the authorised prefixes."""

    as_id: int
    prefixes: tuple[RoaIpAddress, ...]

    def __post_init__(self) -> None:
        _check_asid(self.as_id, "ROA asID")
        _require(bool(self.prefixes), Reason.OBJECT_MALFORMED, "ROA: no prefixes")


# ---- ASPA ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AsProviderAttestation:
    """The eContent of an ASPA (draft-ietf-sidrops-aspa-profile §3): customer and providers.

    Provider order and uniqueness (required by the profile) are not enforced: the reader reports
    what the object says.
    """

    customer_asid: int
    providers: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_asid(self.customer_asid, "ASPA customerASID")
        _require(bool(self.providers), Reason.OBJECT_MALFORMED, "ASPA: no providers")
        for provider in self.providers:
            _check_asid(provider, "ASPA providerASID")


# ---- signed objects (RFC 6488) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SignedObject:
    """A CMS signed object (RFC 6488): its type, signing-time, EE certificate and content."""

    kind: ObjectKind
    #: encapContentInfo.eContentType, dotted (RFC 6488 §2.1.3.1).
    econtent_type: str
    #: The CMS signing-time signed attribute (RFC 5652 §11.3; RFC 9589), None when absent.
    signing_time: datetime | None
    #: The EE certificate that signed it (RFC 6488 §2.1.4).
    ee_certificate: Certificate
    #: The decoded eContent for manifests, ROAs and ASPAs; None for the other kinds.
    content: Manifest | RouteOriginAttestation | AsProviderAttestation | None
    #: True when the eContent is absent (a detached signature, as in an RFC 9632 geofeed).
    detached: bool = False

    def __post_init__(self) -> None:
        if not self.kind.is_signed_object:
            raise ValueError(f"{self.kind} is not a signed-object kind")
        _check_aware(self.signing_time)

    @property
    def not_before(self) -> datetime:
        """The EE certificate's notBefore."""
        return self.ee_certificate.not_before

    @property
    def not_after(self) -> datetime:
        """The EE certificate's notAfter."""
        return self.ee_certificate.not_after

    @property
    def signed_object_uri(self) -> str | None:
        """The EE certificate's first SIA id-ad-signedObject URI (RFC 6487 §4.8.8.2), if any."""
        uris = self.ee_certificate.signed_object
        return uris[0] if uris else None


RpkiObject = Certificate | Crl | SignedObject
