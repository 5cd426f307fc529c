"""Resource certificates (RFC 6487 §4): the trust anchor, CA certificates and EE certificates.

Built with ``cryptography``'s X.509 builder, which expresses the whole profile: version 3,
sha256WithRSAEncryption (RFC 7935 §2), CN-only names, and the extensions of RFC 6487 §4.8 with
their criticality.  RFC 3779 resources go in as raw DER (:class:`x509.UnrecognizedExtension`).

========================  ======  ======  ======  =============================================
extension                 TA      CA      EE      RFC 6487
========================  ======  ======  ======  =============================================
basicConstraints cA       crit.   crit.   --      §4.8.1
subjectKeyIdentifier      yes     yes     yes     §4.8.2
authorityKeyIdentifier    --      yes     yes     §4.8.3 (keyIdentifier only)
keyUsage                  crit.   crit.   crit.   §4.8.4 (CA: keyCertSign, cRLSign; EE: dS)
cRLDistributionPoints     --      yes     yes     §4.8.6 (one rsync URI)
authorityInfoAccess       --      yes     yes     §4.8.7 (caIssuers, rsync)
subjectInfoAccess         yes     yes     yes     §4.8.8 (CA: repository, manifest, notify;
                                                  EE: signedObject)
certificatePolicies       crit.   crit.   crit.   §4.8.9 (1.3.6.1.5.5.7.14.2 only)
ipAddrBlocks / asIds      crit.   crit.   crit.   §4.8.10, §4.8.11 (at least one of them)
========================  ======  ======  ======  =============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

from .keys import KeyPair
from .resources import OID_AS_RESOURCES, OID_IP_RESOURCES, ResourceSet

__all__ = [
    "OID_CP_RPKI",
    "CertKind",
    "CertRequest",
    "issue_certificate",
    "name",
]

OID_CP_RPKI: Final = "1.3.6.1.5.5.7.14.2"  # id-cp-ipAddr-asNumber (RFC 6484 §1.2)
_AD_CA_REPOSITORY: Final = ObjectIdentifier("1.3.6.1.5.5.7.48.5")
_AD_RPKI_MANIFEST: Final = ObjectIdentifier("1.3.6.1.5.5.7.48.10")
_AD_SIGNED_OBJECT: Final = ObjectIdentifier("1.3.6.1.5.5.7.48.11")
_AD_RPKI_NOTIFY: Final = ObjectIdentifier("1.3.6.1.5.5.7.48.13")  # RFC 8182 §3.2


class CertKind(Enum):
    TA = "ta"
    CA = "ca"
    EE = "ee"


def name(common_name: str) -> x509.Name:
    """A subject or issuer name: a CommonName only (RFC 6487 §4.4, §4.5)."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class CertRequest:
    """What the issuer decides about one certificate."""

    kind: CertKind
    subject_cn: str
    subject_key: KeyPair
    serial: int
    not_before: datetime
    not_after: datetime
    resources: ResourceSet
    #: CA and TA: the publication point directory, the manifest and the RRDP notification.
    ca_repository: str | None = None
    rpki_manifest: str | None = None
    rpki_notify: str | None = None
    #: EE: where the signed object lives.
    signed_object: str | None = None
    #: Not for the TA: the issuer's certificate and CRL.
    ca_issuers: str | None = None
    crl_uri: str | None = None


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _uri(value: str | None, what: str) -> x509.UniformResourceIdentifier:
    if value is None:
        raise ValueError(f"{what} is required for this certificate kind")
    return x509.UniformResourceIdentifier(value)


def issue_certificate(req: CertRequest, issuer_cn: str, issuer_key: KeyPair) -> bytes:
    """Build and sign one certificate; returns its DER.  For the TA, ``issuer_key`` is
    ``req.subject_key`` and ``issuer_cn`` its own name (self-signed, RFC 6487 §4.8.3)."""
    ca = req.kind is not CertKind.EE
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(req.subject_cn))
        .issuer_name(name(issuer_cn))
        .public_key(req.subject_key.public)
        .serial_number(req.serial)
        .not_valid_before(req.not_before)
        .not_valid_after(req.not_after)
        .add_extension(x509.SubjectKeyIdentifier(req.subject_key.ski), critical=False)
        .add_extension(_key_usage(ca), critical=True)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier(OID_CP_RPKI), None)]),
            critical=True,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        sia = [
            x509.AccessDescription(_AD_CA_REPOSITORY, _uri(req.ca_repository, "caRepository")),
            x509.AccessDescription(_AD_RPKI_MANIFEST, _uri(req.rpki_manifest, "rpkiManifest")),
        ]
        if req.rpki_notify is not None:
            sia.append(x509.AccessDescription(_AD_RPKI_NOTIFY, _uri(req.rpki_notify, "notify")))
    else:
        sia = [x509.AccessDescription(_AD_SIGNED_OBJECT, _uri(req.signed_object, "signedObject"))]
    builder = builder.add_extension(x509.SubjectInformationAccess(sia), critical=False)
    if req.kind is not CertKind.TA:
        builder = (
            builder.add_extension(
                x509.AuthorityKeyIdentifier(issuer_key.ski, None, None), critical=False
            )
            .add_extension(
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint([_uri(req.crl_uri, "CRL URI")], None, None, None)]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            _uri(req.ca_issuers, "caIssuers"),
                        )
                    ]
                ),
                critical=False,
            )
        )
    if not (req.resources.has_ip or req.resources.has_as):
        raise ValueError("an RPKI certificate holds IP or AS resources (RFC 6487 §4.8.10)")
    if req.resources.has_ip:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                ObjectIdentifier(OID_IP_RESOURCES), req.resources.ip_extension()
            ),
            critical=True,
        )
    if req.resources.has_as:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                ObjectIdentifier(OID_AS_RESOURCES), req.resources.as_extension()
            ),
            critical=True,
        )
    cert = builder.sign(issuer_key.private, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)
