"""A tiny DER/BER TLV walker (ITU-T X.690), with no dependency and no way to read out of bounds.

Theory of operation.  An encoding is a tree of TLVs: identifier octets (X.690 §8.1.2), length
octets (§8.1.3) and contents.  :meth:`Der.tlv` reads one TLV that must lie inside
``data[pos:limit]`` and returns a plain tuple ``(tag, content_start, content_end, end)``; nothing is
copied.  :meth:`Der.children` lists the TLVs inside a constructed value (with an inlined fast path
for the common short and long definite forms).  Every offset is checked against ``limit`` before
use, so a lying length is an error and never a read past the enclosing value.

BER, as RIPE NCC's older objects use it, is supported:

* indefinite lengths (§8.1.3.6): the contents run to an end-of-contents pair ``00 00``; the end is
  found by walking the children, recursively for nested indefinite values, and remembered so that
  each is scanned once;
* constructed strings (§8.7.3, §8.6.3): :meth:`Der.string` concatenates the segments.

Caps: :data:`MAX_DEPTH` bounds the nesting the walker will follow (so recursion is bounded),
:data:`MAX_LENGTH_OCTETS` the long-form length (4 octets: no RPKI object approaches 4 GiB), and
:data:`MAX_TAG_OCTETS` a high tag number.  These are structural constants of the encoding rather
than policy, so they live here and not in :mod:`rpkirepo.limits`; the object size cap
(``Limits.max_object_size``) is applied by the callers before the walker runs.

The ``tag`` in a tuple is the first identifier octet (class, constructed bit and number) for tag
numbers below 31, as in the constants below; high tag numbers (§8.1.2.4) are folded into a
larger int that no constant here equals.

Every failure is a :class:`~rpkirepo.errors.RemoteProtocolError` with reason
``OBJECT_MALFORMED``; the walker raises nothing else.
"""

from __future__ import annotations

from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

__all__ = [
    "BIT_STRING",
    "BOOLEAN",
    "CTX0",
    "CTX0_PRIMITIVE",
    "CTX1",
    "CTX3",
    "GENERALIZED_TIME",
    "IA5_STRING",
    "INTEGER",
    "MAX_DEPTH",
    "MAX_LENGTH_OCTETS",
    "MAX_TAG_OCTETS",
    "OCTET_STRING",
    "OID",
    "SEQUENCE",
    "SET",
    "UTC_TIME",
    "Der",
    "Tlv",
    "encode_oid",
    "malformed",
]

#: Deepest nesting followed (RPKI objects nest about 12 deep; CMS + certificate + extension).
MAX_DEPTH: Final = 48
#: Most long-form length octets accepted (X.690 §8.1.3.5): lengths below 2**32.
MAX_LENGTH_OCTETS: Final = 4
#: Most octets in a high tag number (X.690 §8.1.2.4.2).
MAX_TAG_OCTETS: Final = 4

# Identifier octets (X.690 §8.1.2): universal class, primitive unless noted.
BOOLEAN: Final = 0x01
INTEGER: Final = 0x02
BIT_STRING: Final = 0x03
OCTET_STRING: Final = 0x04
OID: Final = 0x06
IA5_STRING: Final = 0x16
UTC_TIME: Final = 0x17
GENERALIZED_TIME: Final = 0x18
SEQUENCE: Final = 0x30  # constructed
SET: Final = 0x31  # constructed
CTX0: Final = 0xA0  # [0], constructed
CTX1: Final = 0xA1  # [1], constructed
CTX3: Final = 0xA3  # [3], constructed
CTX0_PRIMITIVE: Final = 0x80  # [0], primitive
_CONSTRUCTED: Final = 0x20

#: (tag, content_start, content_end, end).  For a definite length content_end == end; for an
#: indefinite length end is content_end + 2 (the end-of-contents octets).
Tlv = tuple[int, int, int, int]


def malformed(detail: str) -> RemoteProtocolError:
    """The one error the walker raises."""
    return RemoteProtocolError(Reason.OBJECT_MALFORMED, detail)


class Der:
    """A walk over one encoding: ``data`` plus a memo of indefinite-length ends.

    The memo makes finding the end of nested indefinite-length values linear: each one is
    scanned once, however many of its ancestors are measured.
    """

    __slots__ = ("_ends", "data")

    def __init__(self, data: bytes) -> None:
        self.data: Final = data
        self._ends: dict[int, int] = {}

    def raw(self, tlv: Tlv) -> bytes:
        """The contents octets of a primitive value."""
        return self.data[tlv[1] : tlv[2]]

    def tlv(self, pos: int, limit: int, depth: int = 0) -> Tlv:
        """Read the TLV that starts at ``pos``; it must end at or before ``limit``."""
        data = self.data
        if pos >= limit:
            raise malformed("truncated: expected a tag")
        first = data[pos]
        pos += 1
        tag = first
        if first & 0x1F == 0x1F:  # X.690 §8.1.2.4: high tag number, base-128
            number = 0
            for _ in range(MAX_TAG_OCTETS):
                if pos >= limit:
                    raise malformed("truncated in a high tag number")
                octet = data[pos]
                pos += 1
                number = (number << 7) | (octet & 0x7F)
                if not octet & 0x80:
                    break
            else:
                raise malformed("tag number too large")
            tag = (first & 0xE0) | 0x1F | (number << 8)
        elif first == 0:
            raise malformed("unexpected end-of-contents")
        if pos >= limit:
            raise malformed("truncated: expected a length")
        octet = data[pos]
        pos += 1
        if octet < 0x80:  # §8.1.3.4 short form
            end = pos + octet
        elif octet == 0x80:  # §8.1.3.6 indefinite form: constructed values only
            if not first & _CONSTRUCTED:
                raise malformed("indefinite length on a primitive value")
            eoc = self._ends.get(pos)
            if eoc is None:
                if depth >= MAX_DEPTH:
                    raise malformed(f"nested deeper than {MAX_DEPTH}")
                eoc = self._scan(pos, limit, depth + 1)
                self._ends[pos] = eoc
            elif eoc + 2 > limit:
                raise malformed("length runs past the enclosing value")
            return tag, pos, eoc, eoc + 2
        else:  # §8.1.3.5 long form
            count = octet & 0x7F
            if count > MAX_LENGTH_OCTETS:  # includes the reserved 0xFF
                raise malformed("length field too long")
            if pos + count > limit:
                raise malformed("truncated in a length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
            end = pos + length
        if end > limit:
            raise malformed("length runs past the enclosing value")
        return tag, pos, end, end

    def _scan(self, pos: int, limit: int, depth: int) -> int:
        """The position of the end-of-contents octets that close contents starting at ``pos``."""
        data = self.data
        while True:
            if pos + 1 >= limit:
                raise malformed("truncated: no end-of-contents")
            first = data[pos]
            octet = data[pos + 1]
            if first == 0 and octet == 0:
                return pos
            # Inline fast path, as in children(): low tag number, definite length.
            if first & 0x1F != 0x1F and first:
                if octet < 0x80:
                    pos += 2 + octet
                    if pos > limit:
                        raise malformed("length runs past the enclosing value")
                    continue
                count = octet & 0x7F
                if 0 < count <= MAX_LENGTH_OCTETS:
                    start = pos + 2 + count
                    pos = start + int.from_bytes(data[pos + 2 : start], "big")
                    if start > limit or pos > limit:
                        raise malformed("length runs past the enclosing value")
                    continue
            pos = self.tlv(pos, limit, depth)[3]

    def children(self, tlv: Tlv, depth: int = 0) -> list[Tlv]:
        """The TLVs that make up a constructed value's contents, in order."""
        tag, pos, stop, _ = tlv
        if not tag & _CONSTRUCTED:
            raise malformed("expected a constructed value")
        data = self.data
        out: list[Tlv] = []
        append = out.append
        while pos < stop:
            # Inline fast path for the common case: low tag number, definite length.
            first = data[pos]
            if first & 0x1F != 0x1F and first and pos + 1 < stop:
                octet = data[pos + 1]
                if octet < 0x80:
                    end = pos + 2 + octet
                    if end > stop:
                        raise malformed("length runs past the enclosing value")
                    append((first, pos + 2, end, end))
                    pos = end
                    continue
                count = octet & 0x7F
                if 0 < count <= MAX_LENGTH_OCTETS:
                    start = pos + 2 + count
                    end = start + int.from_bytes(data[pos + 2 : start], "big")
                    if start > stop or end > stop:
                        raise malformed("length runs past the enclosing value")
                    append((first, start, end, end))
                    pos = end
                    continue
            child = self.tlv(pos, stop, depth + 1)
            append(child)
            pos = child[3]
        return out

    def string(self, tlv: Tlv, depth: int = 0) -> bytes:
        """The contents of a string value, joining BER constructed segments (X.690 §8.7.3)."""
        tag, start, stop, _ = tlv
        if not tag & _CONSTRUCTED:
            return self.data[start:stop]
        if depth >= MAX_DEPTH:
            raise malformed(f"nested deeper than {MAX_DEPTH}")
        # §8.7.3.2: each segment is an encoding of the same universal string type (a tagged
        # string's segments are OCTET STRINGs: the only tagged strings RPKI has).
        segment = tag & ~_CONSTRUCTED if tag < 0x40 else OCTET_STRING
        parts: list[bytes] = []
        for child in self.children(tlv, depth):
            if child[0] & ~_CONSTRUCTED != segment:
                raise malformed("constructed string segment has the wrong type")
            parts.append(self.string(child, depth + 1))
        return b"".join(parts)

    def walk(self, tlv: Tlv, depth: int = 0) -> int:
        """Check every TLV below ``tlv`` (constructed ones recursively); return how many.

        Used before handing bytes to a recursive parser, so that nesting and lengths are known
        to be sane first.  Primitive contents are not looked into.
        """
        if depth > MAX_DEPTH:
            raise malformed(f"nested deeper than {MAX_DEPTH}")
        count = 1
        if tlv[0] & _CONSTRUCTED:
            for child in self.children(tlv, depth):
                count += self.walk(child, depth + 1)
        return count


def encode_oid(dotted: str) -> bytes:
    """The contents octets of an OBJECT IDENTIFIER (X.690 §8.19), for comparing raw bytes."""
    arcs = [int(a) for a in dotted.split(".")]
    numbers = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for number in numbers:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
