"""CRLs (RFC 6487 §5): version 2, sha256WithRSAEncryption, authorityKeyIdentifier and cRLNumber,
thisUpdate and nextUpdate; the generator revokes nothing, so revokedCertificates is absent."""

from __future__ import annotations

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
) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name(issuer_cn))
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier(issuer_key.ski, None, None), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
        .sign(issuer_key.private, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)
