"""The few DER encodings the eContents and RFC 3779 extensions need (X.690 §8, §10).

Only what the generator writes: definite lengths, primitive strings, INTEGER, OBJECT IDENTIFIER,
GeneralizedTime, SEQUENCE/SET and context tags.  Every function returns one complete TLV; callers
concatenate them.  Certificates and CRLs are encoded by ``cryptography``, CMS by ``asn1crypto``;
this module exists for the RPKI-specific structures neither library knows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

__all__ = [
    "bit_string",
    "context",
    "generalized_time",
    "ia5_string",
    "integer",
    "null",
    "octet_string",
    "oid",
    "sequence",
    "set_of",
]

_INTEGER: Final = 0x02
_BIT_STRING: Final = 0x03
_OCTET_STRING: Final = 0x04
_NULL: Final = 0x05
_OID: Final = 0x06
_IA5_STRING: Final = 0x16
_GENERALIZED_TIME: Final = 0x18
_SEQUENCE: Final = 0x30
_SET: Final = 0x31


def tlv(tag: int, contents: bytes) -> bytes:
    """One TLV with a definite length, short form below 128 (X.690 §8.1.3)."""
    n = len(contents)
    if n < 0x80:
        return bytes((tag, n)) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + contents


def integer(value: int) -> bytes:
    """INTEGER, two's complement in the fewest octets (X.690 §8.3.2)."""
    size = max(1, (value.bit_length() + 8) // 8)
    return tlv(_INTEGER, value.to_bytes(size, "big", signed=True))


def bit_string(data: bytes, bits: int | None = None) -> bytes:
    """BIT STRING of the first ``bits`` bits of ``data`` (all of it by default); the bits past
    ``bits`` in the last octet must be zero, as DER requires (X.690 §11.2.1)."""
    bits = len(data) * 8 if bits is None else bits
    used = (bits + 7) // 8
    if used > len(data):
        raise ValueError("bit string longer than its data")
    body = data[:used]
    unused = used * 8 - bits
    if unused and body[-1] & ((1 << unused) - 1):
        raise ValueError("unused bits of a DER bit string must be zero")
    return tlv(_BIT_STRING, bytes((unused,)) + body)


def octet_string(data: bytes) -> bytes:
    return tlv(_OCTET_STRING, data)


def null() -> bytes:
    return tlv(_NULL, b"")


def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted form (X.690 §8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"bad object identifier {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(_OID, bytes(out))


def ia5_string(text: str) -> bytes:
    return tlv(_IA5_STRING, text.encode("ascii"))


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ, whole seconds, UTC (X.690 §11.7; RFC 5280 §4.1.2.5.2)."""
    if when.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    return tlv(_GENERALIZED_TIME, when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def sequence(*items: bytes) -> bytes:
    return tlv(_SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """SET OF, elements in ascending order of their encodings (X.690 §11.6)."""
    return tlv(_SET, b"".join(sorted(items)))


def context(number: int, contents: bytes, *, constructed: bool = True) -> bytes:
    """A context-specific tag [number]: EXPLICIT when ``contents`` is a whole TLV and
    ``constructed``; for IMPLICIT pass the replaced value's contents octets."""
    if number > 30:
        raise ValueError("high tag numbers are not needed here")
    return tlv(0x80 | (0x20 if constructed else 0) | number, contents)
