"""asn1crypto schemas of the RPKI eContent types the reader decodes.

Each class mirrors the ASN.1 module of its document, field for field; asn1crypto parses BER and
DER alike.  CMS (RFC 5652), certificates and CRLs (RFC 5280) use asn1crypto's own ``cms`` and
``x509``/``crl`` classes; a BGPsec router certificate (RFC 8209) is a plain certificate.

asn1crypto is untyped: nothing from this module leaves the package; :mod:`._reader` turns parsed
values into the typed dataclasses of :mod:`._model` at the boundary.
"""

from __future__ import annotations

from asn1crypto import core

__all__ = [
    "AsProviderAttestation",
    "FileAndHash",
    "Manifest",
    "ROAIPAddress",
    "ROAIPAddressFamily",
    "RouteOriginAttestation",
]


# --- RFC 6482 §3 / RFC 9582 §4: Route Origin Authorization ----------------------------------------
#   RouteOriginAttestation ::= SEQUENCE {
#     version [0] INTEGER DEFAULT 0,
#     asID ASID,
#     ipAddrBlocks SEQUENCE (SIZE(1..2)) OF ROAIPAddressFamily }
#   ROAIPAddressFamily ::= SEQUENCE {
#     addressFamily ADDRESS-FAMILY.&afi ({AddressFamilySet}),  -- OCTET STRING (SIZE(2))
#     addresses SEQUENCE (SIZE (1..MAX)) OF ROAIPAddress }
#   ROAIPAddress ::= SEQUENCE { address IPAddress, maxLength INTEGER OPTIONAL }
#   IPAddress ::= BIT STRING                                   -- RFC 3779 §2.2.3.8
class ROAIPAddress(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto schema attribute
        ("address", core.BitString),
        ("max_length", core.Integer, {"optional": True}),
    ]


class _ROAIPAddresses(core.SequenceOf):  # type: ignore[misc]
    _child_spec = ROAIPAddress


class ROAIPAddressFamily(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("address_family", core.OctetString),
        ("addresses", _ROAIPAddresses),
    ]


class _ROAIPAddressFamilies(core.SequenceOf):  # type: ignore[misc]
    _child_spec = ROAIPAddressFamily


class RouteOriginAttestation(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer, {"explicit": 0, "default": 0}),
        ("as_id", core.Integer),
        ("ip_addr_blocks", _ROAIPAddressFamilies),
    ]


# --- RFC 9286 §4.2: Manifest ----------------------------------------------------------------------
#   Manifest ::= SEQUENCE {
#     version [0] INTEGER DEFAULT 0,
#     manifestNumber INTEGER (0..MAX),
#     thisUpdate GeneralizedTime,
#     nextUpdate GeneralizedTime,
#     fileHashAlg OBJECT IDENTIFIER,
#     fileList SEQUENCE SIZE (0..MAX) OF FileAndHash }
#   FileAndHash ::= SEQUENCE { file IA5String, hash BIT STRING }
class FileAndHash(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("file", core.IA5String),
        ("hash", core.BitString),
    ]


class _FileList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = FileAndHash


class Manifest(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer, {"explicit": 0, "default": 0}),
        ("manifest_number", core.Integer),
        ("this_update", core.GeneralizedTime),
        ("next_update", core.GeneralizedTime),
        ("file_hash_alg", core.ObjectIdentifier),
        ("file_list", _FileList),
    ]


# --- draft-ietf-sidrops-aspa-profile (-15 and later) §3: ASPA -------------------------------------
#   ASProviderAttestation ::= SEQUENCE {
#     version [0] INTEGER (1),          -- explicit, and required: no DEFAULT since profile -15
#     customerASID ASID,
#     providers ProviderASSet }
#   ProviderASSet ::= SEQUENCE (SIZE(1..MAX)) OF ASID
# Older profiles (no version, providers as SEQUENCE { providerASID, afiLimit OPTIONAL }) do not
# match this schema and are refused.
class _ProviderASSet(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.Integer


class AsProviderAttestation(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer, {"explicit": 0}),
        ("customer_asid", core.Integer),
        ("providers", _ProviderASSet),
    ]
