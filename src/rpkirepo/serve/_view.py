"""What `rpkirepo serve` serves: the served set as typed values, built by the revision loader.

A :class:`View` maps URL paths (exactly as :func:`~rpkirepo.serve._http.normalise_path` returns
them) to :class:`Entry` values.  Nothing outside a view's keys is ever served, and a lookup never
touches the filesystem.  Each entry has one or two representations (:class:`Body`): the file
itself and, when the ``.gz`` sibling exists, its gzip form.  A body is either bytes in memory or
an open file (:class:`FileHandle`, opened by the I/O layer) that is sent with ``sendfile`` or
``pread``; it was opened when the revision was loaded, so the file stays servable after the
publisher removes it (its grace period is the loader's business, not the descriptor's).

Everything in an entry that does not change per request (content type, cache policy, ETag,
Last-Modified, Vary, Accept-Ranges, Content-Encoding) is rendered to header bytes once, when the
entry is made: a response costs a status line, a Date and a Content-Length.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

__all__ = [
    "Body",
    "Entry",
    "FileHandle",
    "FileKind",
    "View",
    "http_date",
    "make_entry",
]

CACHE_NOTIFICATION: Final = "public, max-age=60"
CACHE_IMMUTABLE: Final = "public, max-age=86400, immutable"


class FileKind(StrEnum):
    """What a served path is (also the ``kind`` label of the request metrics)."""

    NOTIFICATION = "notification"
    SNAPSHOT = "snapshot"
    DELTA = "delta"


class FileHandle(Protocol):
    """An open file a body is read from with explicit offsets (the I/O layer's
    :class:`~rpkirepo.serve._revision.OpenFile`); ``dev``/``ino``/``size`` identify it."""

    dev: int
    ino: int
    size: int
    path: str

    def fileno(self) -> int: ...

    def pread(self, count: int, offset: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Body:
    """One representation of a served file: in memory (``data``) or on disk (``file``)."""

    size: int
    etag: str  # quoted, strong (RFC 9110 §8.8.3)
    data: bytes | None = None
    file: FileHandle | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.file is None):
            raise ValueError("a body is either in memory or on disk")


@dataclass(frozen=True, slots=True)
class Entry:
    """A served path with its representations and pre-rendered headers."""

    path: str
    kind: FileKind
    identity: Body
    gzip: Body | None
    last_modified: int  # epoch seconds
    headers_identity: bytes
    headers_gzip: bytes

    @property
    def ranges(self) -> bool:
        """Range requests are honoured on snapshots (the only large files)."""
        return self.kind is FileKind.SNAPSHOT


def http_date(epoch: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7)."""
    return email.utils.formatdate(epoch, usegmt=True)


def _headers(kind: FileKind, body: Body, last_modified: str, gz: bool, vary: bool) -> bytes:
    cache = CACHE_NOTIFICATION if kind is FileKind.NOTIFICATION else CACHE_IMMUTABLE
    lines = [
        "Content-Type: application/xml",
        f"Cache-Control: {cache}",
        f"ETag: {body.etag}",
        f"Last-Modified: {last_modified}",
    ]
    if vary:
        lines.append("Vary: Accept-Encoding")
    if gz:
        lines.append("Content-Encoding: gzip")
    if kind is FileKind.SNAPSHOT:
        lines.append("Accept-Ranges: bytes")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def make_entry(
    path: str, kind: FileKind, identity: Body, gzip: Body | None, last_modified: float
) -> Entry:
    lm = int(last_modified)
    lm_text = http_date(lm)
    vary = gzip is not None
    return Entry(
        path=path,
        kind=kind,
        identity=identity,
        gzip=gzip,
        last_modified=lm,
        headers_identity=_headers(kind, identity, lm_text, False, vary),
        headers_gzip=b"" if gzip is None else _headers(kind, gzip, lm_text, True, vary),
    )


@dataclass(frozen=True, slots=True)
class View:
    """The served set at one moment: the current revision plus files still in their grace
    period.  ``serial``/``session_id`` are the current notification's (``None``: nothing loaded
    yet, /healthz answers 503)."""

    entries: dict[str, Entry]
    session_id: str | None = None
    serial: int | None = None

    @property
    def ready(self) -> bool:
        return self.serial is not None


EMPTY_VIEW: Final = View({})
