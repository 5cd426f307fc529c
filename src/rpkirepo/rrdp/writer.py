"""Streaming RRDP serialisation (RFC 8182 §3.5), no I/O.

Each function returns the bytes of one piece (root start tag, one element, end tag), so callers
can write a snapshot of any size piece by piece, hash it as it goes (:class:`HashingSink`), or
cache the bytes of unchanged elements between runs.  The output is pure US-ASCII, one element per
line, base64 without line breaks: the form rpki-client, Routinator, FORT and OctoRPKI all read and
the form :mod:`rpkirepo.rrdp.parser` accepts.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable
from typing import Final, Protocol

from rpkirepo.rrdp.model import (
    RRDP_NAMESPACE,
    RRDP_VERSION,
    FileKind,
    NotificationFile,
    SessionId,
    Sha256,
    validate_serial,
)
from rpkirepo.uri import RsyncUri

__all__ = [
    "HashingSink",
    "delta_start",
    "end_tag",
    "notification_bytes",
    "publish_element",
    "snapshot_start",
    "withdraw_element",
]

_ESCAPES: Final = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;"}


def _attr(value: str) -> str:
    return value.translate(_ESCAPES)


def _root(kind: FileKind, session_id: SessionId, serial: int) -> bytes:
    validate_serial(serial)
    return (
        f'<{kind.value} xmlns="{RRDP_NAMESPACE}" version="{RRDP_VERSION}" '
        f'session_id="{_attr(session_id.value)}" serial="{serial}">\n'
    ).encode("ascii")


def snapshot_start(session_id: SessionId, serial: int) -> bytes:
    """RFC 8182 §3.5.2.1: the ``<snapshot ...>`` start tag."""
    return _root(FileKind.SNAPSHOT, session_id, serial)


def delta_start(session_id: SessionId, serial: int) -> bytes:
    """RFC 8182 §3.5.3.1: the ``<delta ...>`` start tag."""
    return _root(FileKind.DELTA, session_id, serial)


def end_tag(kind: FileKind) -> bytes:
    return f"</{kind.value}>\n".encode("ascii")


def publish_element(uri: RsyncUri, data: bytes, replaces: Sha256 | None = None) -> bytes:
    """``<publish uri="..." [hash="..."]>BASE64</publish>`` and a newline.

    ``replaces`` is the hash of the object being replaced (deltas only, §3.5.3.3).
    """
    hash_attr = f' hash="{replaces.hex}"' if replaces is not None else ""
    return b"".join(
        (
            f'<publish uri="{_attr(uri.uri)}"{hash_attr}>'.encode("ascii"),
            base64.b64encode(data),
            b"</publish>\n",
        )
    )


def withdraw_element(uri: RsyncUri, current: Sha256) -> bytes:
    """``<withdraw uri="..." hash="..."/>`` and a newline (§3.5.3.3)."""
    return f'<withdraw uri="{_attr(uri.uri)}" hash="{current.hex}"/>\n'.encode("ascii")


def notification_bytes(notification: NotificationFile) -> bytes:
    """RFC 8182 §3.5.1: the whole notification file; deltas newest first, as Krill writes them."""
    lines: list[str] = [
        _root(FileKind.NOTIFICATION, notification.session_id, notification.serial).decode("ascii"),
        f'  <snapshot uri="{_attr(notification.snapshot.uri.uri)}" '
        f'hash="{notification.snapshot.hash.hex}"/>\n',
    ]
    for d in sorted(notification.deltas, key=lambda d: d.serial, reverse=True):
        lines.append(
            f'  <delta serial="{d.serial}" uri="{_attr(d.uri.uri)}" hash="{d.hash.hex}"/>\n'
        )
    lines.append("</notification>\n")
    return "".join(lines).encode("ascii")


class Writable(Protocol):
    """Anything with ``write(bytes)``: a binary file, a socket adapter, a list's append."""

    def write(self, data: bytes, /) -> object: ...


class HashingSink:
    """Writes pieces to a binary file while keeping their SHA-256, CRC-32 and length.

    The CRC-32 and length are those a gzip trailer needs for the same bytes, so a caller that
    assembles a gzip sibling from pre-compressed segments can finish it without reading back.
    """

    __slots__ = ("_crc", "_file", "_sha", "size")

    def __init__(self, file: Writable | None) -> None:
        self._file = file
        self._sha = hashlib.sha256()
        self._crc = 0
        self.size = 0

    def write(self, piece: bytes | bytearray | memoryview) -> None:
        self._sha.update(piece)
        self._crc = zlib.crc32(piece, self._crc)
        self.size += len(piece)
        if self._file is not None:
            self._file.write(bytes(piece))

    def write_all(self, pieces: Iterable[bytes]) -> None:
        for p in pieces:
            self.write(p)

    @property
    def sha256(self) -> Sha256:
        return Sha256(self._sha.digest())

    @property
    def crc32(self) -> int:
        return self._crc
