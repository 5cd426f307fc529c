"""The outer frame of an object file: size, emptiness, text instead of DER, trailing bytes.

Both readers (the fast path and the asn1crypto reader) start here, so they refuse the same
files for the same reasons:

* no bytes -> ``OBJECT_EMPTY``;
* more than ``Limits.max_object_size`` bytes -> :class:`~rpkirepo.errors.LimitExceeded`
  (``OBJECT_TOO_LARGE``);
* text (base64 or PEM of an object, a CSV file, a TAL...) -> ``OBJECT_TEXT``; the one exception
  is an RFC 9632 §5 geofeed, a CSV file whose comment block carries a base64 detached CMS
  signature: :func:`frame` hands back the decoded signature instead;
* bytes after the outer TLV (X.690 §8.1.1: one data value) -> ``OBJECT_TRAILING_DATA``;
* anything the TLV walker refuses -> ``OBJECT_MALFORMED``.
"""

from __future__ import annotations

import binascii
from typing import Final

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, RpkiRepoError

from ._der import SEQUENCE, Der, Tlv, malformed

__all__ = ["Frame", "frame", "geofeed_signature", "is_text"]

#: Bytes that may appear in a text file: printable ASCII, tab, CR, LF, and (UTF-8) high bytes.
_TEXT_BYTES: Final = bytes(range(0x20, 0x7F)) + b"\t\r\n" + bytes(range(0x80, 0x100))
# RFC 9632 §5: the signature block of a geofeed file.
_SIG_START: Final = b"# RPKI Signature:"
_SIG_END: Final = b"# End Signature:"

#: (walker, outer tlv, is_geofeed): a walker over the bytes to parse, their one TLV, and whether
#: they were unwrapped from a geofeed CSV file.
Frame = tuple[Der, Tlv, bool]


def is_text(data: bytes) -> bool:
    """True when ``data`` is UTF-8 text without control characters other than tab, CR, LF."""
    if data.translate(None, _TEXT_BYTES):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def geofeed_signature(text: bytes) -> bytes | None:
    """The DER signature from an RFC 9632 §5 geofeed file, or None when there is no block.

    The block is ``# RPKI Signature: <range>``, then lines ``# <base64>``, then
    ``# End Signature: <range>``; it must be the last thing in the file.
    """
    start = text.find(_SIG_START)
    if start < 0 or (start > 0 and text[start - 1] != 0x0A):
        return None
    lines = text[start:].splitlines()[1:]
    chunks: list[bytes] = []
    for i, line in enumerate(lines):
        if line.startswith(_SIG_END):
            if any(rest.strip() for rest in lines[i + 1 :]):
                raise malformed("geofeed: text after the signature block (RFC 9632 §5)")
            break
        if not line.startswith(b"#"):
            raise malformed("geofeed: a signature line does not start with '#'")
        chunks.append(line[1:].strip())
    else:
        raise malformed("geofeed: no '# End Signature:' line (RFC 9632 §5)")
    try:
        return binascii.a2b_base64(b"".join(chunks), strict_mode=True)
    except binascii.Error as exc:
        raise malformed(f"geofeed: bad base64 in the signature block: {exc}") from exc


def frame(data: bytes, max_size: int) -> Frame:
    """Check the outer frame of ``data``; return what to parse.  Raises RpkiRepoError only."""
    size = len(data)
    if size == 0:
        raise RemoteProtocolError(Reason.OBJECT_EMPTY, "empty file")
    if size > max_size:
        raise LimitExceeded(
            Reason.OBJECT_TOO_LARGE,
            f"object of {size} bytes is over the limit",
            limit="max_object_size",
            value=max_size,
        )
    if data[0] != SEQUENCE:
        if not is_text(data):
            raise malformed("does not start with a SEQUENCE")
        return _from_text(data)
    der = Der(data)
    try:
        outer = der.tlv(0, size)
    except RpkiRepoError:
        if is_text(data):  # text that happens to start with "0"
            return _from_text(data)
        raise
    if outer[3] != size:
        if is_text(data):
            return _from_text(data)
        raise RemoteProtocolError(
            Reason.OBJECT_TRAILING_DATA,
            f"{size - outer[3]} bytes after the object",
        )
    return der, outer, False


def _from_text(text: bytes) -> Frame:
    """A geofeed's signature (RFC 9632 §5), or ``OBJECT_TEXT`` for any other text."""
    signature = geofeed_signature(text)
    if signature is None:
        raise RemoteProtocolError(
            Reason.OBJECT_TEXT, "text (base64, PEM or CSV?) instead of DER/BER"
        )
    if not signature or signature[0] != SEQUENCE:
        raise malformed("geofeed: the signature block is not a DER SEQUENCE")
    der = Der(signature)
    outer = der.tlv(0, len(signature))
    if outer[3] != len(signature):
        raise RemoteProtocolError(Reason.OBJECT_TRAILING_DATA, "bytes after the geofeed signature")
    return der, outer, True
