"""RFC 8182 (RRDP) push parser: bytes in, typed events out, no I/O.

Theory of operation
===================

:class:`RrdpParser` is a sans-I/O push parser in the style of h11.  The caller owns the transport
(an HTTPS client, a file, a test vector).  It hands bytes over with :meth:`RrdpParser.feed`, in
chunks of any size down to a single byte, says the input has ended with :meth:`RrdpParser.close`,
and pulls typed values with :meth:`RrdpParser.next_event` until that returns :data:`NEED_DATA`::

    parser = RrdpParser(FileKind.SNAPSHOT, expected_session=session, expected_serial=serial)
    for chunk in body:
        parser.feed(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            stage(event)
    parser.close()
    while (event := parser.next_event()) is not NEED_DATA:
        stage(event)                # the last one is EndOfFile(kind, sha256, size, elements)

Events, in order:

* snapshot and delta files: one :class:`~rpkirepo.rrdp.model.RrdpFileHeader` when the root start
  tag has been checked, then one :class:`~rpkirepo.rrdp.model.PublishElement` or
  :class:`~rpkirepo.rrdp.model.WithdrawElement` per element, in document order;
* notification files: one whole :class:`~rpkirepo.rrdp.model.NotificationFile` when the root
  element ends (a notification is small and only meaningful whole);
* every file: a final :class:`EndOfFile` after :meth:`~RrdpParser.close`, carrying the SHA-256 and
  size of every byte fed.  A caller must not commit anything it staged before it has seen
  ``EndOfFile`` and compared its hash with the one the notification listed (RFC 8182 §3.4.2,
  §3.4.3; rrdp-checklist (b)8): the parser checks the form, the caller checks the hash.

Any rule violation raises from ``feed()`` or ``close()``: :class:`RemoteProtocolError` for bad
input, :class:`LimitExceeded` for a limit from :class:`~rpkirepo.limits.Limits`.  Nothing else
escapes (expat's own errors are mapped to ``xml-malformed``).  After an error the parser is dead
and every further call raises :class:`LocalProtocolError`, as does misuse (``feed()`` after
``close()``).  Once ``EndOfFile`` has been returned, ``next_event()`` keeps returning
``NEED_DATA``.

Three layers
------------

1. ``feed()`` applies the byte-level rules before anything is parsed: the file-size cap, US-ASCII
   only (rpki-client forces it; ``bytes.isascii`` per chunk), and the running SHA-256.  It also
   coalesces tiny chunks: expat 2.5 re-tokenises an incomplete token from its start on every
   call, which turns byte-at-a-time feeding of one long token quadratic.  Chunks below 64 KiB are
   collected until 64 KiB are pending (or ``close()``), so events may lag the bytes a little.
2. expat checks well-formedness only (mismatched tags, duplicate attributes, junk after the
   root).  It runs without namespace processing, like rpki-client: the namespace is the literal
   ``xmlns`` attribute, compared as an exact string, so ``HTTP://www.ripe.net/rpki/rrdp`` and
   prefixed forms are refused.  A DOCTYPE, any entity declaration, any entity reference beyond
   the five predefined ones and character references (``xml-entity``), and processing
   instructions other than the XML declaration are refused by handlers that raise at once, so
   nothing is ever expanded or fetched.
3. The handlers implement the RRDP grammar of RFC 8182 §3.5 as a small state machine over the
   element depth (root = 1, child = 2, nothing deeper) and the root kind, build the typed values
   of :mod:`rpkirepo.rrdp.model` (which validate themselves on construction), and apply the
   per-file rules: one snapshot reference, no empty delta, each URI at most once per file.

Memory stays flat
-----------------

Nothing grows with the file but 8 bytes per URI and what the caller leaves undrained:

* the pending-input buffer is below 64 KiB; pyexpat's text buffer is bounded (``buffer_size``);
* the base64 text of one ``<publish>`` element is collected with its whitespace removed and its
  running length checked *before* each piece is appended, so an oversized object raises
  :class:`LimitExceeded` (``limit=max_object_size``) after at most one text buffer more than the
  limit, never after the whole element;
* expat holds an unfinished token (a start tag, a comment) in memory, so a start tag of a gigabyte
  (a gzip bomb's giant serial or URI) would be held whole.  The parser counts the bytes fed since
  the last event; more than ``Limits.max_xml_markup_size`` without one is an error;
* duplicate-URI detection keeps, per file, a set of 64-bit keyed BLAKE2b digests of the URIs
  (normalised as the store maps them: lower-case host, module, path), not the URIs.  The key is
  random per parser, so a remote party cannot construct colliding URIs; the chance of an
  accidental collision among a million URIs is about 3e-8, and its only effect would be refusing
  the file.  The set is a compact one (:class:`_DigestSet`, 8 bytes per URI): a Python ``set``
  of digests would still cost about 100 bytes per URI, 40 MB for a 1 GB snapshot;
* a notification keeps its delta references, at most ``Limits.max_deltas_listed`` of them.

Non-goals: HTTP, content decoding (gzip), comparing hashes with the notification, applying
deltas to a store (RFC 8182 §3.4.2 checks that need the store), same-origin checks (RFC 9674; see
:meth:`~rpkirepo.rrdp.model.NotificationFile.cross_origin_refs`), and update planning
(:mod:`rpkirepo.rrdp.plan`).
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Final, NoReturn
from xml.parsers import expat

from rpkirepo.errors import (
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rrdp.model import (
    RRDP_NAMESPACE,
    RRDP_VERSION,
    DeltaRef,
    FileKind,
    NotificationFile,
    PublishElement,
    RrdpFileHeader,
    SessionId,
    Sha256,
    SnapshotRef,
    WithdrawElement,
    validate_serial,
)
from rpkirepo.uri import HttpsUri, RsyncUri, uri_to_relpath

__all__ = [
    "NEED_DATA",
    "EndOfFile",
    "NeedData",
    "RrdpEvent",
    "RrdpParser",
    "iter_events",
    "parse_notification",
]


class NeedData(Enum):
    """The type of :data:`NEED_DATA` (a one-member enum, so type checkers can narrow on it)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`RrdpParser.next_event` when no event is ready: feed more bytes or close().
NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class EndOfFile:
    """The last event of every file, after :meth:`RrdpParser.close`.

    ``sha256`` and ``size`` cover every byte fed, exactly as received (after HTTP content
    decoding); ``elements`` counts the publish and withdraw elements of a snapshot or delta, or the
    delta references of a notification.
    """

    kind: FileKind
    sha256: Sha256
    size: int
    elements: int


RrdpEvent = RrdpFileHeader | PublishElement | WithdrawElement | NotificationFile | EndOfFile
"""Everything :meth:`RrdpParser.next_event` can return besides :data:`NEED_DATA`."""

# Input below this size is collected before expat sees it (see the module docstring, layer 1).
_MIN_PARSE_CHUNK: Final = 64 * 1024
# pyexpat's character-data buffer: one call per text node up to this size, fewer calls beyond.
_TEXT_BUFFER: Final = 256 * 1024

_ELEMENT_NAMES: Final = frozenset(
    {"notification", "snapshot", "delta", "publish", "withdraw"},
)
_ROOT_NAMES: Final = frozenset(k.value for k in FileKind)
_ROOT_ATTRIBUTES: Final = frozenset({"xmlns", "version", "session_id", "serial"})
_ROOT_REQUIRED: Final = ("version", "session_id", "serial")
_URI_HASH: Final = frozenset({"uri", "hash", "xmlns"})
_DELTA_REF_ATTRIBUTES: Final = frozenset({"serial", "uri", "hash", "xmlns"})
_MAX_SERIAL_DIGITS: Final = 20

# What the element at depth 2 is: decides what its text and its end tag mean.
_NONE: Final = 0
_PUBLISH: Final = 1
_WITHDRAW: Final = 2
_REF: Final = 3  # <snapshot/> or <delta/> inside a notification


class _DigestSet:
    """A set of 8-byte digests at 8 bytes per member (about 100 in a Python ``set``).

    Members are keyed-hash outputs, so their leading bits are uniform: they pick a bucket, a
    bytearray of concatenated digests searched with ``bytearray.find`` (only matches at a
    multiple of 8 count).  When buckets average more than 128 members there are 16 times as
    many, so a lookup scans about a kilobyte at most.  For the 21 million smallest objects a
    4 GiB snapshot could hold this is about 200 MB, where a ``set`` would need 2 GB.
    """

    __slots__ = ("_bits", "_buckets", "_count")

    _FIRST_BITS: Final = 10
    _MAX_BITS: Final = 22
    _PER_BUCKET: Final = 128

    def __init__(self) -> None:
        self._bits = self._FIRST_BITS
        self._buckets = [bytearray() for _ in range(1 << self._bits)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, digest: bytes) -> bool:
        """Add an 8-byte ``digest``; False when it was already a member."""
        bucket = self._buckets[int.from_bytes(digest[:3], "big") >> (24 - self._bits)]
        pos = bucket.find(digest)
        while pos >= 0:
            if not pos & 7:
                return False
            pos = bucket.find(digest, pos + 1)
        bucket += digest
        self._count += 1
        if self._count > self._PER_BUCKET << self._bits and self._bits < self._MAX_BITS:
            self._grow()
        return True

    def _grow(self) -> None:
        bits = self._bits + 4
        shift = 24 - bits
        buckets = [bytearray() for _ in range(1 << bits)]
        for old in self._buckets:
            for pos in range(0, len(old), 8):
                member = old[pos : pos + 8]
                buckets[int.from_bytes(member[:3], "big") >> shift] += member
        self._buckets = buckets
        self._bits = bits


def _parse_serial(text: str) -> int:
    """RFC 8182 §3.5.1.3: xsd:positiveInteger, decimal digits only, below 2^63 (rpki-client)."""
    # isascii() first: str.isdigit() also accepts non-ASCII digits that a character reference
    # such as &#x661; can smuggle in, and int() would happily convert them.
    if not (0 < len(text) <= _MAX_SERIAL_DIGITS and text.isascii() and text.isdigit()):
        raise RemoteProtocolError(
            Reason.RRDP_SERIAL, "serial is not a positive decimal integer", value=text[:80]
        )
    return validate_serial(int(text))


class RrdpParser:
    """Push parser for one RRDP notification, snapshot or delta file (RFC 8182 §3.5).

    ``expect`` names the kind of file the caller asked for; another root is refused
    (``rrdp-root-element``).  ``expected_session`` and ``expected_serial`` are the values the
    notification listed for this snapshot or delta; a root that differs is refused
    (RFC 8182 §3.5.2.3, §3.5.3.3; rrdp-checklist (c)21).
    """

    __slots__ = (
        "_child",
        "_closed",
        "_dead",
        "_delta_serials",
        "_deltas",
        "_depth",
        "_elements",
        "_events",
        "_expect",
        "_expected_serial",
        "_expected_session",
        "_kind",
        "_limits",
        "_max_b64",
        "_pending",
        "_progress",
        "_pub_hash",
        "_pub_uri",
        "_root_done",
        "_serial",
        "_session",
        "_sha",
        "_size",
        "_snapshot_ref",
        "_stall",
        "_text_len",
        "_text_parts",
        "_uri_digests",
        "_uri_hasher",
        "_wd_hash",
        "_wd_uri",
        "_xml",
    )

    def __init__(
        self,
        expect: FileKind | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        expected_session: SessionId | None = None,
        expected_serial: int | None = None,
    ) -> None:
        if expect is not None and not isinstance(expect, FileKind):
            raise LocalProtocolError(Reason.USAGE, "expect must be a FileKind or None")
        self._expect = expect
        self._limits = limits
        self._expected_session = expected_session
        self._expected_serial = expected_serial

        self._events: deque[RrdpEvent] = deque()
        self._sha = hashlib.sha256()
        self._size = 0
        self._pending = bytearray()
        self._stall = 0
        self._progress = False
        self._dead = False
        self._closed = False

        self._kind: FileKind | None = None
        self._session: SessionId | None = None
        self._serial = 0
        self._depth = 0
        self._root_done = False
        self._child = _NONE
        self._elements = 0

        # <publish>: its URI and hash from the start tag, its base64 text without whitespace.
        # Decoded size of n base64 characters is at most 3n/4: refuse text beyond what the
        # largest allowed object needs, before appending it.
        self._max_b64 = 4 * -(-limits.max_object_size // 3)
        self._text_parts: list[str] = []
        self._text_len = 0
        self._pub_uri: RsyncUri | None = None
        self._pub_hash: Sha256 | None = None
        self._wd_uri: RsyncUri | None = None
        self._wd_hash: Sha256 | None = None
        # rrdp-checklist (b)17, (c)24: each URI at most once per snapshot or delta.
        self._uri_hasher = hashlib.blake2b(digest_size=8, key=secrets.token_bytes(16))
        self._uri_digests = _DigestSet()

        # Notification state.
        self._snapshot_ref: SnapshotRef | None = None
        self._deltas: list[DeltaRef] = []
        self._delta_serials: set[int] = set()

        # US-ASCII forced whatever the XML declaration says (rpki-client does the same); the
        # bytes are checked to be ASCII before expat sees them.
        xml = expat.ParserCreate(encoding="US-ASCII")
        xml.buffer_text = True
        # pyexpat's text buffer must flush well within max_xml_markup_size, since text that sits
        # in it does not count as progress (see _parse).
        xml.buffer_size = max(1024, min(_TEXT_BUFFER, limits.max_xml_markup_size // 4))
        xml.ordered_attributes = False
        # rrdp-checklist (b)6, (c)1-2: no DTD, no entities, nothing external, ever.
        xml.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        xml.StartDoctypeDeclHandler = self._on_doctype
        xml.EntityDeclHandler = self._on_entity_decl
        xml.UnparsedEntityDeclHandler = self._on_entity_decl
        xml.NotationDeclHandler = self._on_entity_decl
        xml.ExternalEntityRefHandler = self._on_entity_decl
        xml.SkippedEntityHandler = self._on_entity_decl
        xml.ProcessingInstructionHandler = self._on_processing_instruction
        xml.XmlDeclHandler = self._on_progress
        xml.CommentHandler = self._on_progress
        xml.StartElementHandler = self._on_start
        xml.EndElementHandler = self._on_end
        xml.CharacterDataHandler = self._on_text
        self._xml = xml

    # ------------------------------------------------------------------ public API

    @property
    def sha256(self) -> Sha256:
        """SHA-256 of every byte fed so far (RFC 8182 §3.4.2, §3.4.3: the hash to compare).

        Like :attr:`size`, it stays readable after an error (it then covers the bytes accepted
        before the failing call), so a caller can still log what it was served.
        """
        return Sha256(self._sha.copy().digest())

    @property
    def size(self) -> int:
        """Number of bytes fed so far."""
        return self._size

    @property
    def kind(self) -> FileKind | None:
        """The root element's kind, once the root start tag has been accepted."""
        return self._kind

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the file.  Raises on the first rule the bytes break."""
        self._check_usable("feed")
        if isinstance(data, bytes):
            piece = data
        elif isinstance(data, bytearray | memoryview):
            piece = bytes(data)
        else:
            raise LocalProtocolError(Reason.USAGE, "feed() takes bytes")
        if not piece:
            return
        try:
            size = self._size + len(piece)
            self._check_size(size)
            if not piece.isascii():
                # rpki-client forces US-ASCII (rrdp-checklist (b)6): no UTF-8 or other bytes.
                offset = next(i for i, b in enumerate(piece) if b >= 0x80)
                raise RemoteProtocolError(
                    Reason.XML_NOT_ASCII,
                    "non-ASCII byte in an RRDP file",
                    offset=self._size + offset,
                )
            self._sha.update(piece)
            self._size = size
            pending = self._pending
            if len(piece) >= _MIN_PARSE_CHUNK:
                if pending:
                    held = bytes(pending)
                    pending.clear()
                    self._parse(held)
                self._parse(piece)
            else:
                pending += piece
                if len(pending) >= _MIN_PARSE_CHUNK:
                    held = bytes(pending)
                    pending.clear()
                    self._parse(held)
        except RpkiRepoError:
            self._die()
            raise

    def close(self) -> None:
        """Signal the end of input.  Raises if the file is incomplete; queues :class:`EndOfFile`."""
        self._check_usable("close")
        self._closed = True
        try:
            if self._pending:
                chunk = bytes(self._pending)
                self._pending.clear()
                self._parse(chunk)
            if not self._root_done:
                raise RemoteProtocolError(
                    Reason.RRDP_TRUNCATED,
                    "input ended before the root element was closed",
                    size=self._size,
                )
            self._parse(b"", final=True)
        except RpkiRepoError:
            self._die()
            raise
        assert self._kind is not None
        self._events.append(EndOfFile(self._kind, self.sha256, self._size, self._elements))

    def next_event(self) -> RrdpEvent | NeedData:
        """The next event, or :data:`NEED_DATA` when none is ready (always after EndOfFile)."""
        if self._dead:
            raise LocalProtocolError(Reason.USAGE, "the parser failed earlier and is unusable")
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    # ------------------------------------------------------------------ byte level

    def _check_usable(self, what: str) -> None:
        if self._dead:
            raise LocalProtocolError(Reason.USAGE, "the parser failed earlier and is unusable")
        if self._closed:
            raise LocalProtocolError(Reason.USAGE, f"{what}() after close()")

    def _die(self) -> None:
        self._dead = True
        self._events.clear()
        self._pending.clear()
        self._text_parts.clear()

    def _check_size(self, size: int) -> None:
        kind = self._kind or self._expect
        limits = self._limits
        if kind is FileKind.NOTIFICATION:
            name, cap = "max_notification_size", limits.max_notification_size
        elif kind is None:
            # Until the root start tag names the kind, the larger cap applies; _parse re-checks
            # as soon as it is known.
            name = "max_rrdp_file_size"
            cap = max(limits.max_rrdp_file_size, limits.max_notification_size)
        else:
            name, cap = "max_rrdp_file_size", limits.max_rrdp_file_size
        if size > cap:
            raise LimitExceeded(
                Reason.FILE_TOO_LARGE, f"file larger than {cap} bytes", limit=name, size=size
            )

    def _parse(self, chunk: bytes, final: bool = False) -> None:
        self._progress = False
        try:
            self._xml.Parse(chunk, final)
        except expat.ExpatError as exc:
            code = exc.code
            reason = (
                Reason.XML_ENTITY
                if code == expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]
                else Reason.XML_MALFORMED
            )
            raise RemoteProtocolError(
                reason, expat.ErrorString(code), line=exc.lineno, column=exc.offset
            ) from None
        # The root's kind may have become known: a notification has its own, smaller cap.
        self._check_size(self._size)
        # Bytes that produced no event sit in expat's token buffer (or were whitespace outside
        # the root): bound them (rrdp-checklist (c)4).  A chunk with an event resets the count,
        # so the bound is max_xml_markup_size plus one chunk.
        if self._progress:
            self._stall = 0
        else:
            self._stall += len(chunk)
            if self._stall > self._limits.max_xml_markup_size:
                raise LimitExceeded(
                    Reason.LIMIT,
                    "too many bytes without a complete XML event (giant tag or comment?)",
                    limit="max_xml_markup_size",
                    size=self._stall,
                )

    # ------------------------------------------------------------------ expat handlers

    def _fail(self, reason: Reason, detail: str, **context: str | int | None) -> NoReturn:
        raise RemoteProtocolError(
            reason,
            detail,
            line=self._xml.CurrentLineNumber,
            column=self._xml.CurrentColumnNumber,
            **context,
        )

    def _on_progress(self, *_args: object) -> None:
        self._progress = True

    def _on_doctype(self, *_args: object) -> NoReturn:
        # rrdp-checklist (b)6, (c)1-2 (rpki-client 676e3e01): no DTD at all, so no entity bomb
        # and no external entity can ever be declared, let alone expanded.
        self._fail(Reason.XML_DOCTYPE, "DOCTYPE declarations are not allowed")

    def _on_entity_decl(self, *_args: object) -> NoReturn:
        # Unreachable while the DOCTYPE handler refuses first; kept as a second wall.
        self._fail(Reason.XML_ENTITY, "entity declarations and references are not allowed")

    def _on_processing_instruction(self, target: str, _data: str) -> None:
        # rrdp-checklist (b)6: the XML declaration (its own handler) is the only one allowed.
        self._fail(
            Reason.XML_PROCESSING_INSTRUCTION,
            "processing instructions are not allowed",
            target=target[:80],
        )

    def _check_attributes(self, name: str, attrs: dict[str, str], allowed: frozenset[str]) -> None:
        """Unknown attributes, over-long values and a child's own xmlns (rrdp-checklist (b)6)."""
        max_len = self._limits.max_xml_attribute_length
        for key, value in attrs.items():
            if key not in allowed:
                self._fail(
                    Reason.RRDP_UNKNOWN_ATTRIBUTE,
                    f"unknown attribute on <{name}>",
                    attribute=key[:80],
                )
            if len(value) > max_len:
                raise LimitExceeded(
                    Reason.LIMIT,
                    f"attribute {key} on <{name}> longer than {max_len} characters",
                    limit="max_xml_attribute_length",
                    line=self._xml.CurrentLineNumber,
                )
        # A child may repeat the default namespace declaration (rpki-client's regress snapshot
        # does); any other value would move the element out of the RRDP namespace.
        xmlns = attrs.get("xmlns")
        if xmlns is not None and xmlns != RRDP_NAMESPACE:
            self._fail(Reason.RRDP_NAMESPACE, f"<{name}> in another namespace", xmlns=xmlns[:80])

    def _required(self, name: str, attrs: dict[str, str], key: str) -> str:
        value = attrs.get(key)
        if value is None:
            self._fail(
                Reason.RRDP_MISSING_ATTRIBUTE,
                f"<{name}> without the {key} attribute",
                attribute=key,
            )
        return value

    def _on_start(self, name: str, attrs: dict[str, str]) -> None:
        self._progress = True
        depth = self._depth
        self._depth = depth + 1
        if depth == 0:
            self._start_root(name, attrs)
            return
        if name not in _ELEMENT_NAMES:
            # rrdp-checklist (b)6, (c)9: unknown elements are refused, not skipped.
            self._fail(Reason.RRDP_UNKNOWN_ELEMENT, "unknown element", element=name[:80])
        if depth >= 2:
            # RFC 8182 §3.5: publish, withdraw, snapshot and delta references have no children.
            self._fail(Reason.RRDP_NESTING, f"<{name}> nested in another element", element=name)
        kind = self._kind
        if kind is FileKind.SNAPSHOT:
            if name == "publish":
                self._start_publish(attrs, in_snapshot=True)
            elif name == "withdraw":
                # RFC 8182 §3.5.2.3 (schema): a snapshot holds publish elements only.
                self._fail(Reason.RRDP_WITHDRAW_IN_SNAPSHOT, "withdraw element in a snapshot")
            else:
                self._fail(Reason.RRDP_NESTING, f"<{name}> inside a snapshot", element=name)
        elif kind is FileKind.DELTA:
            if name == "publish":
                self._start_publish(attrs, in_snapshot=False)
            elif name == "withdraw":
                self._start_withdraw(attrs)
            else:
                self._fail(Reason.RRDP_NESTING, f"<{name}> inside a delta", element=name)
        elif name == "snapshot":
            self._start_snapshot_ref(attrs)
        elif name == "delta":
            self._start_delta_ref(attrs)
        else:
            self._fail(Reason.RRDP_NESTING, f"<{name}> inside a notification", element=name)

    def _on_end(self, _name: str) -> None:
        # expat has already matched the end tag to its start tag.
        self._progress = True
        self._depth -= 1
        if self._depth == 1:
            child = self._child
            self._child = _NONE
            if child == _PUBLISH:
                self._end_publish()
            elif child == _WITHDRAW:
                self._end_withdraw()
        elif self._depth == 0:
            self._end_root()

    def _on_text(self, data: str) -> None:
        self._progress = True
        if self._child == _PUBLISH:
            # RFC 8182 §3.5.2.3, §3.5.3.3: xsd:base64Binary, so whitespace may appear anywhere.
            # For ASCII text str.split() splits exactly on XML whitespace: the other characters
            # it treats as whitespace are not allowed in XML 1.0 documents at all.
            if not data.isascii():
                self._fail(Reason.RRDP_BASE64, "non-ASCII character in base64 text")
            # Four substring searches are ten times cheaper than split() on unbroken base64.
            if "\n" in data or " " in data or "\r" in data or "\t" in data:
                piece = "".join(data.split())
            else:
                piece = data
            total = self._text_len + len(piece)
            if total > self._max_b64:
                # rrdp-checklist (c)6: refuse before buffering any more of it.
                raise LimitExceeded(
                    Reason.OBJECT_TOO_LARGE,
                    f"object larger than {self._limits.max_object_size} bytes",
                    limit="max_object_size",
                    uri=self._pub_uri.uri if self._pub_uri is not None else None,
                )
            self._text_len = total
            self._text_parts.append(piece)
            return
        if data.isascii() and not data.strip():
            return  # whitespace between elements
        if self._child == _WITHDRAW:
            # RFC 8182 §3.5.3.3 (schema): withdraw is an empty element; rrdp-checklist (c)26.
            self._fail(Reason.RRDP_WITHDRAW_WITH_CONTENT, "withdraw element with content")
        # rrdp-checklist (b)6: text is only allowed inside publish.
        self._fail(Reason.RRDP_UNEXPECTED_TEXT, "text outside a publish element")

    # ------------------------------------------------------------------ the root element

    def _start_root(self, name: str, attrs: dict[str, str]) -> None:
        # RFC 8182 §3.5.1.3, §3.5.2.3, §3.5.3.3: the root names the file kind.
        if name not in _ROOT_NAMES:
            self._fail(Reason.RRDP_ROOT_ELEMENT, "not an RRDP root element", element=name[:80])
        kind = FileKind(name)
        if self._expect is not None and kind is not self._expect:
            self._fail(
                Reason.RRDP_ROOT_ELEMENT,
                f"expected a {self._expect.value} file",
                element=name,
            )
        # RFC 8182 §3.5: every root carries the RRDP namespace, exactly (rpki-client 15b4d655).
        xmlns = attrs.get("xmlns")
        if xmlns != RRDP_NAMESPACE:
            self._fail(
                Reason.RRDP_NAMESPACE,
                "root element is not in the RRDP namespace",
                xmlns=None if xmlns is None else xmlns[:80],
            )
        self._check_attributes(name, attrs, _ROOT_ATTRIBUTES)
        version, session_text, serial_text = (
            self._required(name, attrs, key) for key in _ROOT_REQUIRED
        )
        # RFC 8182 §3.5: version 1 is the only version (schema maxInclusive 1).
        if version != RRDP_VERSION:
            self._fail(Reason.RRDP_VERSION, "unsupported RRDP version", version=version[:80])
        # RFC 8182 §3.5.1.3: session_id is a version 4 UUID; serial a positive integer.
        session = SessionId(session_text)
        serial = _parse_serial(serial_text)
        # RFC 8182 §3.5.2.3, §3.5.3.3: the file must be the one the notification listed
        # (rrdp-checklist (b)14, (c)21).
        expected_session = self._expected_session
        if expected_session is not None and not session.same_session(expected_session):
            self._fail(
                Reason.RRDP_SESSION_MISMATCH,
                "session_id differs from the notification's",
                session_id=session.value,
                expected=expected_session.value,
            )
        if self._expected_serial is not None and serial != self._expected_serial:
            self._fail(
                Reason.RRDP_SERIAL_MISMATCH,
                "serial differs from the one the notification listed",
                serial=serial,
                expected=self._expected_serial,
            )
        self._kind = kind
        self._session = session
        self._serial = serial
        if kind is not FileKind.NOTIFICATION:
            self._events.append(RrdpFileHeader(kind, session, serial))

    def _end_root(self) -> None:
        self._root_done = True
        kind = self._kind
        if kind is FileKind.DELTA and self._elements == 0:
            # RFC 8182 §3.5.3.3 (schema: one or more); rrdp-checklist (c)26, Krill #1180.
            self._fail(Reason.RRDP_EMPTY_DELTA, "delta file without publish or withdraw elements")
        elif kind is FileKind.NOTIFICATION:
            if self._snapshot_ref is None:
                # RFC 8182 §3.5.1.3: exactly one snapshot element; rrdp-checklist (c)10.
                self._fail(Reason.RRDP_SNAPSHOT_COUNT, "notification without a snapshot element")
            assert self._session is not None
            self._events.append(
                NotificationFile(
                    self._session, self._serial, self._snapshot_ref, tuple(self._deltas)
                )
            )
            self._deltas = []
            self._delta_serials = set()
        self._uri_digests = _DigestSet()

    # ------------------------------------------------------------------ snapshot and delta

    def _object_uri(self, text: str) -> RsyncUri:
        """RFC 8182 §3.5.2.3, §3.5.3.3: an rsync URI naming one object, once per file."""
        # rrdp-checklist (b)18, (c)28: the RsyncUri constructor refuses anything unsafe.
        uri = RsyncUri.parse(text, max_length=self._limits.max_uri_length)
        if uri.is_directory or not uri.path:
            self._fail(Reason.URI_SYNTAX, "publish/withdraw URI names a directory", uri=text[:200])
        # rrdp-checklist (b)17, (c)24: each URI at most once per snapshot or delta, compared the
        # way the store maps URIs to files (host case folded).
        hasher = self._uri_hasher.copy()  # cheaper than keying a new one for every URI
        hasher.update(uri_to_relpath(uri).encode("ascii"))
        digest = hasher.digest()
        if not self._uri_digests.add(digest):
            self._fail(Reason.RRDP_DUPLICATE_URI, "URI appears twice in one file", uri=text[:200])
        return uri

    def _start_publish(self, attrs: dict[str, str], *, in_snapshot: bool) -> None:
        self._check_attributes("publish", attrs, _URI_HASH)
        hash_text = attrs.get("hash")
        if in_snapshot and hash_text is not None:
            # RFC 8182 §3.5.2.3 (schema): snapshot publish elements carry no hash;
            # rrdp-checklist (c)26.
            self._fail(Reason.RRDP_PUBLISH_HASH_IN_SNAPSHOT, "publish with a hash in a snapshot")
        uri_text = self._required("publish", attrs, "uri")
        # RFC 8182 §3.5.3.3: in a delta, hash names the object this one replaces.
        self._pub_hash = None if hash_text is None else Sha256.from_hex(hash_text)
        self._pub_uri = self._object_uri(uri_text)
        self._child = _PUBLISH
        self._text_len = 0

    def _end_publish(self) -> None:
        text = "".join(self._text_parts)
        self._text_parts.clear()
        self._text_len = 0
        uri = self._pub_uri
        assert uri is not None
        try:
            # rrdp-checklist §0, (c)7: strict decoding once whitespace is gone.  This is exactly
            # what base64.b64decode(text, validate=True) does on Python 3.11+, minus a wrapper.
            data = binascii.a2b_base64(text, strict_mode=True)
        except ValueError:
            self._fail(Reason.RRDP_BASE64, "malformed base64 in publish element", uri=uri.uri)
        if len(text) != 4 * -(-len(data) // 3):
            # strict_mode still ignores padding after a complete quantum ("QUJD=", "QUJD====").
            self._fail(Reason.RRDP_BASE64, "excess padding in base64 text", uri=uri.uri)
        limits = self._limits
        if len(data) > limits.max_object_size:
            raise LimitExceeded(
                Reason.OBJECT_TOO_LARGE,
                f"object larger than {limits.max_object_size} bytes",
                limit="max_object_size",
                uri=uri.uri,
            )
        if len(data) < limits.min_object_size:
            # rrdp-checklist (c)27 (rpki-client 79dba38a): no RPKI object is this small.
            self._fail(
                Reason.RRDP_OBJECT_TOO_SMALL,
                f"object smaller than {limits.min_object_size} bytes",
                uri=uri.uri,
                size=len(data),
                limit="min_object_size",
            )
        self._events.append(PublishElement(uri, data, self._pub_hash))
        self._elements += 1
        self._pub_uri = None

    def _start_withdraw(self, attrs: dict[str, str]) -> None:
        self._check_attributes("withdraw", attrs, _URI_HASH)
        uri_text = self._required("withdraw", attrs, "uri")
        hash_text = attrs.get("hash")
        if hash_text is None:
            # RFC 8182 §3.5.3.3: withdraw names the current hash of the object it removes.
            self._fail(Reason.RRDP_WITHDRAW_WITHOUT_HASH, "withdraw without a hash", uri=uri_text)
        self._wd_hash = Sha256.from_hex(hash_text)
        self._wd_uri = self._object_uri(uri_text)
        self._child = _WITHDRAW

    def _end_withdraw(self) -> None:
        assert self._wd_uri is not None and self._wd_hash is not None
        self._events.append(WithdrawElement(self._wd_uri, self._wd_hash))
        self._elements += 1
        self._wd_uri = None
        self._wd_hash = None

    # ------------------------------------------------------------------ notification

    def _https_uri(self, text: str) -> HttpsUri:
        # RFC 8182 §3.5.1.3: snapshot and delta files are fetched over HTTPS.
        return HttpsUri.parse(text, max_length=self._limits.max_uri_length)

    def _start_snapshot_ref(self, attrs: dict[str, str]) -> None:
        if self._snapshot_ref is not None:
            # RFC 8182 §3.5.1.3: exactly one snapshot element; rrdp-checklist (c)10.
            self._fail(Reason.RRDP_SNAPSHOT_COUNT, "notification with two snapshot elements")
        self._check_attributes("snapshot", attrs, _URI_HASH)
        uri = self._https_uri(self._required("snapshot", attrs, "uri"))
        digest = Sha256.from_hex(self._required("snapshot", attrs, "hash"))
        self._snapshot_ref = SnapshotRef(uri, digest)
        self._child = _REF

    def _start_delta_ref(self, attrs: dict[str, str]) -> None:
        if self._snapshot_ref is None:
            # RFC 8182 §3.5.4 (schema): the snapshot element comes before the delta elements.
            self._fail(Reason.RRDP_ELEMENT_ORDER, "delta element before the snapshot element")
        if len(self._deltas) >= self._limits.max_deltas_listed:
            raise LimitExceeded(
                Reason.TOO_MANY_DELTAS,
                f"more than {self._limits.max_deltas_listed} delta elements",
                limit="max_deltas_listed",
            )
        self._check_attributes("delta", attrs, _DELTA_REF_ATTRIBUTES)
        serial = _parse_serial(self._required("delta", attrs, "serial"))
        if serial in self._delta_serials:
            # rrdp-checklist (b)10, (c)12 (rpki-client add_delta).
            self._fail(
                Reason.RRDP_DUPLICATE_DELTA_SERIAL, "delta serial listed twice", serial=serial
            )
        if serial > self._serial:
            self._fail(
                Reason.RRDP_DELTA_SERIAL_ABOVE_NOTIFICATION,
                "delta serial above the notification serial",
                serial=serial,
            )
        uri = self._https_uri(self._required("delta", attrs, "uri"))
        digest = Sha256.from_hex(self._required("delta", attrs, "hash"))
        self._deltas.append(DeltaRef(serial, uri, digest))
        self._delta_serials.add(serial)
        self._elements += 1
        self._child = _REF


# ---------------------------------------------------------------------- helpers


def iter_events(
    chunks: Iterable[bytes],
    expect: FileKind | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expected_session: SessionId | None = None,
    expected_serial: int | None = None,
) -> Iterator[RrdpEvent]:
    """Parse ``chunks`` lazily, yielding every event; the keywords are :class:`RrdpParser`'s."""
    parser = RrdpParser(
        expect, limits=limits, expected_session=expected_session, expected_serial=expected_serial
    )
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            yield event
    parser.close()
    while (event := parser.next_event()) is not NEED_DATA:
        yield event


def parse_notification(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> NotificationFile:
    """Parse a whole notification file (RFC 8182 §3.5.1)."""
    result: NotificationFile | None = None
    for event in iter_events((data,), FileKind.NOTIFICATION, limits=limits):
        if isinstance(event, NotificationFile):
            result = event
    assert result is not None  # close() succeeded, so the root element was complete
    return result
