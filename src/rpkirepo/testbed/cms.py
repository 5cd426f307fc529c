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

from . import der
from .keys import KeyPair

__all__ = [
    "OID_ASPA",
    "OID_GBR",
    "OID_MANIFEST",
    "OID_ROA",
    "econtent_of",
    "sign_object",
    "sign_object_der",
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


_OID_SIGNED_DATA: Final = "1.2.840.113549.1.7.2"
_OID_SHA256: Final = "2.16.840.1.101.3.4.2.1"
_OID_RSA: Final = "1.2.840.113549.1.1.1"
_OID_CONTENT_TYPE: Final = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST: Final = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME: Final = "1.2.840.113549.1.9.5"
_UTC_TIME: Final = 0x17


def sign_object_der(
    econtent_type: str,
    econtent: bytes,
    ee_certificate: bytes,
    ee_key: KeyPair,
    signing_time: datetime,
) -> bytes:
    """:func:`sign_object`, byte for byte, assembled directly in DER (no asn1crypto objects):
    several times faster, for the testbed's scale mode."""
    when = signing_time.astimezone(UTC).replace(microsecond=0)
    if not 1950 <= when.year < 2050:
        raise ValueError("signing-time outside UTCTime (RFC 5652 §11.3)")
    attrs = [
        der.sequence(der.oid(_OID_CONTENT_TYPE), der.set_of(der.oid(econtent_type))),
        der.sequence(
            der.oid(_OID_MESSAGE_DIGEST),
            der.set_of(der.octet_string(hashlib.sha256(econtent).digest())),
        ),
        der.sequence(
            der.oid(_OID_SIGNING_TIME),
            der.set_of(der.tlv(_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())),
        ),
    ]
    signed_attrs = der.set_of(*attrs)
    sha256 = der.sequence(der.oid(_OID_SHA256), der.null())  # as asn1crypto writes it
    signer = der.sequence(
        der.integer(3),
        der.context(0, ee_key.ski, constructed=False),
        sha256,
        der.context(0, signed_attrs[_header_length(signed_attrs) :]),
        der.sequence(der.oid(_OID_RSA), der.null()),
        der.octet_string(ee_key.sign(signed_attrs)),
    )
    signed_data = der.sequence(
        der.integer(3),
        der.set_of(sha256),
        der.sequence(der.oid(econtent_type), der.context(0, der.octet_string(econtent))),
        der.context(0, ee_certificate),
        der.set_of(signer),
    )
    return der.sequence(der.oid(_OID_SIGNED_DATA), der.context(0, signed_data))


def _header_length(tlv: bytes) -> int:
    """The length of a DER TLV's tag and length octets (single-octet tag)."""
    return 2 if tlv[1] < 0x80 else 2 + (tlv[1] & 0x7F)


def econtent_of(signed_object: bytes) -> tuple[str, bytes]:
    """The eContentType (dotted) and eContent of a signed object this module wrote, so that
    ``testbed advance`` can sign the same content again under a new key (RFC 6489)."""
    info: Any = cms.ContentInfo.load(signed_object)
    encap = info["content"]["encap_content_info"]
    return cast(str, encap["content_type"].dotted), cast(bytes, encap["content"].native)
