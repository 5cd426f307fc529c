"""Typed values of RFC 8182 (RRDP), named after the RFC, validated on construction.

A notification file (§3.5.1) names one snapshot (§3.5.2) and zero or more deltas (§3.5.3) of one
session.  Snapshots hold ``publish`` elements only; deltas hold one or more ``publish`` (with a
``hash`` when they replace an object) and ``withdraw`` elements.

No I/O here; the parser (:mod:`rpkirepo.rrdp.parser`) produces these values and the writer
(:mod:`rpkirepo.rrdp.writer`) serialises them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = [
    "MAX_SERIAL",
    "RRDP_NAMESPACE",
    "RRDP_VERSION",
    "DeltaRef",
    "FileKind",
    "NotificationFile",
    "PublishElement",
    "RrdpFileHeader",
    "SessionId",
    "Sha256",
    "SnapshotRef",
    "WithdrawElement",
    "validate_serial",
]

#: RFC 8182 §3.5: the XML namespace of every RRDP root element.
RRDP_NAMESPACE: Final = "http://www.ripe.net/rpki/rrdp"
#: RFC 8182 §3.5: the only protocol version.
RRDP_VERSION: Final = "1"
#: Serials are xsd:positiveInteger; like rpki-client we refuse anything at or above 2^63.
MAX_SERIAL: Final = 2**63 - 1

_UUID_V4: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


class FileKind(StrEnum):
    """The three RRDP file kinds (root element names)."""

    NOTIFICATION = "notification"
    SNAPSHOT = "snapshot"
    DELTA = "delta"


def validate_serial(serial: int) -> int:
    """RFC 8182 §3.5: a positive integer; capped below 2^63 (rpki-client's bound)."""
    if isinstance(serial, bool) or not isinstance(serial, int) or not (1 <= serial <= MAX_SERIAL):
        raise RemoteProtocolError(Reason.RRDP_SERIAL, "serial out of range", serial=str(serial))
    return serial


@dataclass(frozen=True, slots=True)
class SessionId:
    """RFC 8182 §3.5.1.3: a version 4 UUID (RFC 4122), kept as written for byte-exact echo."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or _UUID_V4.fullmatch(self.value) is None:
            raise RemoteProtocolError(
                Reason.RRDP_SESSION_ID,
                "session_id is not a version 4 UUID",
                value=str(self.value)[:80],
            )

    def same_session(self, other: SessionId) -> bool:
        """UUIDs compare case-insensitively."""
        return self.value.lower() == other.value.lower()

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Sha256:
    """A SHA-256 digest; RRDP writes it as 64 hexadecimal characters (RFC 8182 §3.5)."""

    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise RemoteProtocolError(Reason.RRDP_HASH_SYNTAX, "a SHA-256 digest is 32 bytes")

    @classmethod
    def from_hex(cls, text: str) -> Sha256:
        if not isinstance(text, str) or _HEX64.fullmatch(text) is None:
            raise RemoteProtocolError(
                Reason.RRDP_HASH_SYNTAX, "hash is not 64 hex characters", value=str(text)[:80]
            )
        return cls(bytes.fromhex(text))

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Sha256:
        return cls(hashlib.sha256(data).digest())

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """RFC 8182 §3.5.1.3: the ``<snapshot uri hash/>`` element of a notification."""

    uri: HttpsUri
    hash: Sha256


@dataclass(frozen=True, slots=True)
class DeltaRef:
    """RFC 8182 §3.5.1.3: a ``<delta serial uri hash/>`` element of a notification."""

    serial: int
    uri: HttpsUri
    hash: Sha256

    def __post_init__(self) -> None:
        validate_serial(self.serial)


@dataclass(frozen=True, slots=True)
class NotificationFile:
    """RFC 8182 §3.5.1: one session, its current serial, one snapshot, zero or more deltas.

    Construction checks the rules that need no outside knowledge: unique delta serials, none above
    the notification serial.  Same-origin checks (RFC 9674) need the notification's own URI and
    live in :meth:`cross_origin_refs`.
    """

    session_id: SessionId
    serial: int
    snapshot: SnapshotRef
    deltas: tuple[DeltaRef, ...] = ()

    def __post_init__(self) -> None:
        validate_serial(self.serial)
        seen: set[int] = set()
        for d in self.deltas:
            if d.serial in seen:
                raise RemoteProtocolError(
                    Reason.RRDP_DUPLICATE_DELTA_SERIAL, "delta serial listed twice", serial=d.serial
                )
            if d.serial > self.serial:
                raise RemoteProtocolError(
                    Reason.RRDP_DELTA_SERIAL_ABOVE_NOTIFICATION,
                    "delta serial above the notification serial",
                    serial=d.serial,
                )
            seen.add(d.serial)

    def cross_origin_refs(self, notification_uri: HttpsUri) -> list[HttpsUri]:
        """Snapshot and delta URIs whose origin differs from the notification's (RFC 9674)."""
        refs = [self.snapshot.uri, *(d.uri for d in self.deltas)]
        return [u for u in refs if not u.same_origin(notification_uri)]


@dataclass(frozen=True, slots=True)
class RrdpFileHeader:
    """The root element of a snapshot or delta file: kind, session and serial (§3.5.2, §3.5.3)."""

    kind: FileKind
    session_id: SessionId
    serial: int

    def __post_init__(self) -> None:
        validate_serial(self.serial)


@dataclass(frozen=True, slots=True)
class PublishElement:
    """RFC 8182 §3.5.2.2 / §3.5.3.3: an object.  ``hash`` is set when it replaces an object."""

    uri: RsyncUri
    data: bytes
    hash: Sha256 | None = None


@dataclass(frozen=True, slots=True)
class WithdrawElement:
    """RFC 8182 §3.5.3.3: remove the object at ``uri`` whose current SHA-256 is ``hash``."""

    uri: RsyncUri
    hash: Sha256
