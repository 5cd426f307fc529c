"""RPKI signed objects (RFC 6488): CMS SignedData around one eContent, one EE certificate.

The envelope, field by field (RFC 6488 §2.1; algorithms RFC 7935):

* ContentInfo contentType id-signedData; SignedData version 3; digestAlgorithms {sha256};
* encapContentInfo: the object's eContentType and its DER eContent;
* certificates: exactly the EE certificate; no crls;
* one SignerInfo, version 3, sid = subjectKeyIdentifier of the EE certificate, sha256,
  signatureAlgorithm rsaEncryption (RFC 7935 §2 allows it or sha256WithRSAEncryption), no
  unsigned attributes;
* signedAttrs (RFC 6488 §2.1.6.4): content-type, message-digest and signing-time, nothing else.
  signing-time is always present (RFC 9589 §4: publishers should include it, and repositories
  use it as the rsync mtime).

The signature is computed over the DER of the signed attributes as a SET OF (RFC 5652 §5.4),
which asn1crypto sorts when it encodes.  asn1crypto is untyped: its values stay inside this
module and only bytes come out.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final, cast

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509

from .keys import KeyPair

__all__ = [
    "OID_ASPA",
    "OID_GBR",
    "OID_MANIFEST",
    "OID_ROA",
    "econtent_of",
    "sign_object",
]

OID_ROA: Final = "1.2.840.113549.1.9.16.1.24"  # id-ct-routeOriginAuthz (RFC 9582 §3)
OID_MANIFEST: Final = "1.2.840.113549.1.9.16.1.26"  # id-ct-rpkiManifest (RFC 9286 §4.1)
OID_GBR: Final = "1.2.840.113549.1.9.16.1.35"  # id-ct-rpkiGhostbusters (RFC 6493 §6)
OID_ASPA: Final = "1.2.840.113549.1.9.16.1.49"  # id-ct-ASPA (draft-ietf-sidrops-aspa-profile)


def sign_object(
    econtent_type: str,
    econtent: bytes,
    ee_certificate: bytes,
    ee_key: KeyPair,
    signing_time: datetime,
) -> bytes:
    """The DER of a signed object carrying ``econtent`` signed by ``ee_key``."""
    when = signing_time.astimezone(UTC).replace(microsecond=0)
    attrs: Any = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [econtent_type]}),
            cms.CMSAttribute(
                {"type": "message_digest", "values": [hashlib.sha256(econtent).digest()]}
            ),
            # UTCTime up to 2049 (RFC 5652 §11.3).
            cms.CMSAttribute(
                {"type": "signing_time", "values": [cms.Time(name="utc_time", value=when)]}
            ),
        ]
    )
    signature = ee_key.sign(cast(bytes, attrs.dump()))
    signer = cms.SignerInfo(
        {
            "version": "v3",
            "sid": cms.SignerIdentifier(name="subject_key_identifier", value=ee_key.ski),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": cms.CMSAttributes.load(attrs.dump()),
            "signature_algorithm": algos.SignedDigestAlgorithm(
                {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
            ),
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {
                "content_type": econtent_type,
                "content": core.ParsableOctetString(econtent),
            },
            "certificates": [asn1_x509.Certificate.load(ee_certificate)],
            "signer_infos": [signer],
        }
    )
    info = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return cast(bytes, info.dump())


def econtent_of(signed_object: bytes) -> tuple[str, bytes]:
    """The eContentType (dotted) and eContent of a signed object this module wrote, so that
    ``testbed advance`` can sign the same content again under a new key (RFC 6489)."""
    info: Any = cms.ContentInfo.load(signed_object)
    encap = info["content"]["encap_content_info"]
    return cast(str, encap["content_type"].dotted), cast(bytes, encap["content"].native)
