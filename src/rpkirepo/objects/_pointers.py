"""What a relying party's walk needs, on the fast path: a CA certificate's SIA pointers and a
manifest's entries.

Theory of operation.  ``rpkirepo fetch`` walks every CA of a repository on every run: it needs
each CA certificate's kind and SIA URIs (caRepository, rpkiManifest, rpkiNotify: RFC 6487
§4.8.8.1, RFC 8182 §3.2) and each manifest's number and file list (RFC 9286 §4.2).  The full
reader (asn1crypto) takes 2-5 ms per object, which at 10,000 CAs is most of a run; the TLV walker
of :mod:`._fast` reads the same values in tens of microseconds, with the same structural rules
(fields in order, nothing left over, exactly one SignerInfo).  Nothing here checks a signature.
The tests compare both readers on every corpus certificate and manifest.

Only :class:`~rpkirepo.errors.RpkiRepoError` subclasses are raised (``OBJECT_*`` reasons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS, Limits

from ._der import (
    BIT_STRING,
    CTX0,
    IA5_STRING,
    INTEGER,
    OID,
    SEQUENCE,
    Der,
    Tlv,
    encode_oid,
    malformed,
)
from ._fast import (
    _CERTIFICATE,
    _CONTENT_INFO,
    _ENCAP,
    _EXTENSION,
    _OCTETS,
    _RAW_SIGNED_DATA,
    _SIGNED_DATA,
    _TBS_CERTIFICATE,
    _TIMES,
    _certificate_kind,
    _fields,
    _inner,
    _match,
    _only_child,
)
from ._framing import frame
from ._kinds import OID_MANIFEST, ObjectKind
from ._model import FileAndHash

__all__ = ["CaPointers", "ManifestEntries", "read_ca_pointers", "read_manifest_entries"]

_RAW_SIA: Final = encode_oid("1.3.6.1.5.5.7.1.11")  # RFC 5280 §4.2.2.2
_RAW_CA_REPOSITORY: Final = encode_oid("1.3.6.1.5.5.7.48.5")
_RAW_RPKI_MANIFEST: Final = encode_oid("1.3.6.1.5.5.7.48.10")
_RAW_RPKI_NOTIFY: Final = encode_oid("1.3.6.1.5.5.7.48.13")
_RAW_MANIFEST: Final = encode_oid(OID_MANIFEST)
#: GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String (RFC 5280 §4.2.1.6).
_URI: Final = 0x86
_MAX_URIS: Final = 16


# ---- CaPointers ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CaPointers:
    """A certificate's kind and its SIA URIs, in the order the certificate lists them."""

    kind: ObjectKind
    ca_repository: tuple[str, ...]
    rpki_manifest: tuple[str, ...]
    rpki_notify: tuple[str, ...]


# ---- ManifestEntries -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ManifestEntries:
    """A manifest's number and its (file name, SHA-256) entries (RFC 9286 §4.2.1)."""

    manifest_number: int
    files: tuple[tuple[str, bytes], ...]


_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]*")
#: A manifest file name: a safe single path segment (the rule of FileAndHash).
_SAFE_NAME: Final = re.compile(rb"(?!\.\.?\Z)[\x21-\x2e\x30-\x7e]+")


def _ascii(data: bytes, what: str) -> str:
    if _PRINTABLE.fullmatch(data) is None:
        raise RemoteProtocolError(Reason.OBJECT_MALFORMED, f"{what} is not printable ASCII")
    return data.decode("ascii")


def _entry(inner: Der, entry: Tlv) -> tuple[str, bytes]:
    """One FileAndHash, the general way (any length form, BER)."""
    pair = inner.children(entry) if entry[0] == SEQUENCE else []
    if len(pair) != 2 or pair[0][0] != IA5_STRING or pair[1][0] != BIT_STRING:
        raise malformed("FileAndHash is not SEQUENCE { IA5String, BIT STRING }")
    bits = inner.raw(pair[1])
    if not bits or bits[0] != 0:
        raise malformed("FileAndHash: the hash has unused bits")
    item = FileAndHash(_ascii(inner.raw(pair[0]), "a manifest file name"), bits[1:])
    return item.file, item.hash


def read_ca_pointers(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> CaPointers:
    """Kind and SIA URIs of a resource certificate (not of a CRL or a CMS object)."""
    der, outer, _ = frame(data, limits.max_object_size)
    kids = der.children(outer)
    if not kids or kids[0][0] != SEQUENCE:
        raise RemoteProtocolError(Reason.OBJECT_UNKNOWN_TYPE, "not a certificate")
    tbs = _match(kids, _CERTIFICATE, "Certificate")[0]
    assert tbs is not None
    fields = _fields(der, tbs, _TBS_CERTIFICATE, "TBSCertificate")
    kind = _certificate_kind(der, tbs)
    found: dict[bytes, list[str]] = {
        _RAW_CA_REPOSITORY: [],
        _RAW_RPKI_MANIFEST: [],
        _RAW_RPKI_NOTIFY: [],
    }
    extensions = fields[9]
    if extensions is not None:
        for ext in der.children(_only_child(der, extensions, (SEQUENCE,), "extensions")):
            if ext[0] != SEQUENCE:
                raise malformed("Extensions: an extension is not a SEQUENCE")
            oid_tlv, _, value_tlv = _fields(der, ext, _EXTENSION, "Extension")
            assert oid_tlv is not None and value_tlv is not None
            if der.raw(oid_tlv) != _RAW_SIA:
                continue
            value, inner = _inner(der.string(value_tlv))
            if inner[0] != SEQUENCE:
                raise malformed("subjectInfoAccess is not a SEQUENCE")
            for access in value.children(inner):
                pair = value.children(access) if access[0] == SEQUENCE else []
                if len(pair) != 2 or pair[0][0] != OID:
                    raise malformed("AccessDescription is not SEQUENCE { OID, GeneralName }")
                uris = found.get(value.raw(pair[0]))
                if uris is None or pair[1][0] != _URI:
                    continue  # another access method, or a name that is not a URI
                if len(uris) >= _MAX_URIS:
                    raise malformed("too many SIA URIs of one kind")
                uris.append(_ascii(value.raw(pair[1]), "an SIA URI"))
    return CaPointers(
        kind,
        tuple(found[_RAW_CA_REPOSITORY]),
        tuple(found[_RAW_RPKI_MANIFEST]),
        tuple(found[_RAW_RPKI_NOTIFY]),
    )


def _econtent(der: Der, outer: Tlv) -> tuple[bytes, bytes]:
    """(eContentType, eContent octets) of a CMS SignedData."""
    kids = der.children(outer)
    if not kids or kids[0][0] != OID:
        raise RemoteProtocolError(Reason.OBJECT_UNKNOWN_TYPE, "not a CMS object")
    oid, content = _match(kids, _CONTENT_INFO, "ContentInfo")
    assert oid is not None
    if der.raw(oid) != _RAW_SIGNED_DATA or content is None:
        raise RemoteProtocolError(Reason.OBJECT_NOT_SIGNED_DATA, "not SignedData")
    signed_data = _only_child(der, content, (SEQUENCE,), "ContentInfo.content")
    fields = _fields(der, signed_data, _SIGNED_DATA, "SignedData")
    encap, signer_infos = fields[2], fields[5]
    assert encap is not None and signer_infos is not None
    if len(der.children(signer_infos)) != 1:
        raise malformed("SignedData: not exactly one SignerInfo (RFC 6488 §2.1)")
    etype, econtent = _fields(der, encap, _ENCAP, "EncapsulatedContentInfo")
    assert etype is not None
    if econtent is None:
        raise malformed("SignedData: no eContent")
    octets = _only_child(der, econtent, _OCTETS, "eContent")
    return der.raw(etype), der.string(octets)


def read_manifest_entries(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> ManifestEntries:
    """manifestNumber and fileList of a manifest (RFC 9286 §4.2.1); names are checked to be safe
    single path segments (:class:`~rpkirepo.objects.FileAndHash`)."""
    der, outer, _ = frame(data, limits.max_object_size)
    etype, content = _econtent(der, outer)
    if etype != _RAW_MANIFEST:
        raise RemoteProtocolError(Reason.OBJECT_BAD_CONTENT_TYPE, "not a manifest")
    inner = Der(content)
    top = inner.tlv(0, len(content))
    if top[3] != len(content):
        raise RemoteProtocolError(Reason.OBJECT_TRAILING_DATA, "bytes after the manifest")
    if top[0] != SEQUENCE:
        raise malformed("Manifest is not a SEQUENCE")
    kids = inner.children(top)
    if kids and kids[0][0] == CTX0:  # version [0] EXPLICIT INTEGER DEFAULT 0
        kids = kids[1:]
    if len(kids) != 5 or kids[0][0] != INTEGER or kids[4][0] != SEQUENCE:
        raise malformed("Manifest: fields (RFC 9286 §4.2)")
    if any(k[0] not in _TIMES for k in kids[1:3]) or kids[3][0] != OID:
        raise malformed("Manifest: fields (RFC 9286 §4.2)")
    raw_number = inner.raw(kids[0])
    if not raw_number or raw_number[0] & 0x80:
        raise RemoteProtocolError(Reason.OBJECT_MALFORMED, "manifest: bad manifestNumber")
    number = int.from_bytes(raw_number, "big")
    files: list[tuple[str, bytes]] = []
    append = files.append
    safe = _SAFE_NAME.fullmatch
    for entry in inner.children(kids[4]):
        # The usual DER shape, read in place: 30 L 16 n NAME 03 21 00 HASH32 (short lengths);
        # anything else (long forms, BER, a bad entry) takes the general path, which decides.
        tag, start, end, _ = entry
        if tag == SEQUENCE and content[start] == IA5_STRING:
            n = content[start + 1]
            at = start + 2 + n
            if (
                n < 0x80
                and at + 35 == end
                and content[at : at + 3] == b"\x03\x21\x00"
                and safe(content, start + 2, at) is not None
            ):
                append((content[start + 2 : at].decode("ascii"), content[at + 3 : end]))
                continue
        append(_entry(inner, entry))
    return ManifestEntries(number, tuple(files))
