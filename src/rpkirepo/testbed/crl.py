"""CRLs (RFC 6487 §5): version 2, sha256WithRSAEncryption, authorityKeyIdentifier and cRLNumber,
thisUpdate and nextUpdate, and revokedCertificates (serial and revocationDate, no entry
extensions) only when something is revoked: a fresh testbed revokes nothing, ``testbed
advance`` revokes the EE certificates of withdrawn ROAs and replaced manifests and the old
certificate of a CA that rolled its key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .certificates import name
from .keys import KeyPair

__all__ = ["issue_crl"]


def issue_crl(
    issuer_cn: str,
    issuer_key: KeyPair,
    number: int,
    this_update: datetime,
    next_update: datetime,
    revoked: Sequence[tuple[int, datetime]] = (),
) -> bytes:
    """The DER of a CRL; ``revoked`` is (serial, revocationDate) pairs, written in serial order."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name(issuer_cn))
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier(issuer_key.ski, None, None), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in sorted(revoked):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(issuer_key.private, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)
