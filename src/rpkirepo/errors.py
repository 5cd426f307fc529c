"""One error root for the whole toolkit, a small tree under it, and stable reason codes.

Every refusal the toolkit makes carries a :class:`Reason`: a short, stable, kebab-case string that
appears in logs, metrics labels and reports.  Reason values are API: never rename one, only add.

The tree (after h11 and httpcore):

* :class:`RpkiRepoError` -- the root; catch this to catch everything the toolkit raises on purpose.
  * :class:`ProtocolError` -- a protocol rule was broken.
    * :class:`RemoteProtocolError` -- by the peer or by untrusted input (an RRDP file, an object).
    * :class:`LocalProtocolError` -- by our own caller (API misuse, an illegal state transition).
  * :class:`LimitExceeded` -- a named limit from :mod:`rpkirepo.limits` was hit.
  * :class:`IntegrityError` -- a hash or a consistency check failed.
  * :class:`InputError` -- operator-supplied input is unusable (a bad file in a source directory).
  * :class:`StorageError` -- the local filesystem failed or holds something unexpected.
  * :class:`ConfigError` -- configuration or command-line values are invalid.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "ConfigError",
    "InputError",
    "IntegrityError",
    "LimitExceeded",
    "LocalProtocolError",
    "ProtocolError",
    "Reason",
    "RemoteProtocolError",
    "RpkiRepoError",
    "StorageError",
]


class Reason(StrEnum):
    """Stable reason codes.  Grouped by area; values never change once released."""

    # --- URIs (rrdp-checklist (b)18, (c)28) ---
    URI_SCHEME = "uri-scheme"
    URI_SYNTAX = "uri-syntax"
    URI_TOO_LONG = "uri-too-long"
    URI_BAD_CHARACTER = "uri-bad-character"
    URI_DOT_SEGMENT = "uri-dot-segment"
    URI_EMPTY_SEGMENT = "uri-empty-segment"
    URI_HIDDEN_SEGMENT = "uri-hidden-segment"
    URI_BAD_HOST = "uri-bad-host"
    URI_OUTSIDE_BASE = "uri-outside-base"

    # --- RRDP wire format (RFC 8182 §3.5; rrdp-checklist §0, (c)1-10, 21, 24, 26) ---
    XML_MALFORMED = "xml-malformed"
    XML_DOCTYPE = "xml-doctype"
    XML_ENTITY = "xml-entity"
    XML_PROCESSING_INSTRUCTION = "xml-processing-instruction"
    XML_NOT_ASCII = "xml-not-ascii"
    RRDP_ROOT_ELEMENT = "rrdp-root-element"
    RRDP_NAMESPACE = "rrdp-namespace"
    RRDP_VERSION = "rrdp-version"
    RRDP_SESSION_ID = "rrdp-session-id"
    RRDP_SERIAL = "rrdp-serial"
    RRDP_UNKNOWN_ELEMENT = "rrdp-unknown-element"
    RRDP_UNKNOWN_ATTRIBUTE = "rrdp-unknown-attribute"
    RRDP_MISSING_ATTRIBUTE = "rrdp-missing-attribute"
    RRDP_UNEXPECTED_TEXT = "rrdp-unexpected-text"
    RRDP_NESTING = "rrdp-nesting"
    RRDP_SNAPSHOT_COUNT = "rrdp-snapshot-count"
    RRDP_HASH_SYNTAX = "rrdp-hash-syntax"
    RRDP_BASE64 = "rrdp-base64"
    RRDP_EMPTY_DELTA = "rrdp-empty-delta"
    RRDP_WITHDRAW_WITHOUT_HASH = "rrdp-withdraw-without-hash"
    RRDP_WITHDRAW_WITH_CONTENT = "rrdp-withdraw-with-content"
    RRDP_PUBLISH_HASH_IN_SNAPSHOT = "rrdp-publish-hash-in-snapshot"
    RRDP_WITHDRAW_IN_SNAPSHOT = "rrdp-withdraw-in-snapshot"
    RRDP_DUPLICATE_URI = "rrdp-duplicate-uri"
    RRDP_DUPLICATE_DELTA_SERIAL = "rrdp-duplicate-delta-serial"
    RRDP_DELTA_SERIAL_ABOVE_NOTIFICATION = "rrdp-delta-serial-above-notification"
    RRDP_CROSS_ORIGIN = "rrdp-cross-origin"
    RRDP_SESSION_MISMATCH = "rrdp-session-mismatch"
    RRDP_SERIAL_MISMATCH = "rrdp-serial-mismatch"
    RRDP_TRUNCATED = "rrdp-truncated"
    RRDP_OBJECT_TOO_SMALL = "rrdp-object-too-small"
    RRDP_ELEMENT_ORDER = "rrdp-element-order"

    # --- RRDP update planning (rrdp-checklist (b)9-13): why the snapshot is taken ---
    PLAN_NO_LOCAL_STATE = "no-local-state"
    PLAN_NEW_SESSION = "new-session"
    PLAN_UP_TO_DATE = "up-to-date"
    PLAN_DELTAS = "deltas"
    PLAN_DELTA_GAP = "delta-gap"
    PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL = "last-delta-not-notification-serial"
    PLAN_DELTA_HASH_CHANGED = "delta-hash-changed"
    PLAN_TOO_MANY_DELTAS = "too-many-deltas"
    PLAN_SERIAL_REGRESSION = "serial-regression"
    PLAN_NO_DELTAS = "no-deltas"
    PLAN_LOCAL_SERIAL_ZERO = "local-serial-zero"
    PLAN_DUPLICATE_DELTA_SERIAL = "duplicate-delta-serial"
    PLAN_DELTA_SERIAL_ABOVE_NOTIFICATION = "delta-serial-above-notification"

    # --- Integrity ---
    HASH_MISMATCH = "hash-mismatch"
    OBJECT_MISSING = "object-missing"
    OBJECT_ALREADY_PRESENT = "object-already-present"

    # --- RPKI objects (RFC 6487/6488/6482/9286, ASPA, ...) ---
    OBJECT_EMPTY = "object-empty"
    OBJECT_MALFORMED = "object-malformed"
    OBJECT_UNKNOWN_TYPE = "object-unknown-type"
    OBJECT_TRAILING_DATA = "object-trailing-data"
    OBJECT_BAD_CONTENT_TYPE = "object-bad-content-type"
    OBJECT_NO_SIGNING_TIME = "object-no-signing-time"
    OBJECT_BAD_TIME = "object-bad-time"
    OBJECT_NOT_SIGNED_DATA = "object-not-signed-data"
    OBJECT_TEXT = "object-text"  # text (base64, PEM, CSV) where DER/BER was expected
    OBJECT_BAD_RESOURCE = "object-bad-resource"  # RFC 3779 / ROA / ASPA value out of range

    # --- publish: operator input and local state ---
    SOURCE_UNREADABLE = "source-unreadable"
    SOURCE_SYMLINK = "source-symlink"
    SOURCE_SPECIAL_FILE = "source-special-file"
    SOURCE_BAD_NAME = "source-bad-name"
    SOURCE_UNSUPPORTED_TYPE = "source-unsupported-type"
    SOURCE_CHANGED_DURING_READ = "source-changed-during-read"
    SOURCE_SHRINK = "source-shrink-refused"
    STATE_MISSING = "state-missing"
    STATE_CORRUPT = "state-corrupt"
    STATE_INCOMPATIBLE = "state-incompatible"
    STATE_OUTPUT_MISMATCH = "state-output-mismatch"
    STATE_LOCKED = "state-locked"
    STORAGE_IO = "storage-io"
    STORAGE_UNEXPECTED = "storage-unexpected"

    # --- limits ---
    LIMIT = "limit-exceeded"
    OBJECT_TOO_LARGE = "object-too-large"
    FILE_TOO_LARGE = "file-too-large"
    TOO_MANY_OBJECTS = "too-many-objects"
    TOO_MANY_DELTAS = "too-many-deltas-listed"

    # --- configuration and usage ---
    CONFIG_INVALID = "config-invalid"
    CONFIG_UNKNOWN_KEY = "config-unknown-key"
    USAGE = "usage"

    # --- sync (and every HTTP fetch) ---
    HTTP_CONNECT = "http-connect-failed"
    HTTP_TLS = "http-tls-failed"
    HTTP_TIMEOUT = "http-timeout"
    HTTP_STATUS = "http-status"
    HTTP_MALFORMED = "http-malformed"
    HTTP_CONTENT_ENCODING = "http-content-encoding"
    HTTP_REDIRECT = "http-redirect-refused"
    HTTP_TOO_MANY_REDIRECTS = "http-too-many-redirects"
    SYNC_URI_OUTSIDE_BASE = "sync-uri-outside-base"
    SYNC_SHRINK = "sync-shrink-refused"
    SYNC_RSYNC_MODULE = "sync-rsync-module-mismatch"
    SYNC_FILE_CHANGED = "sync-file-changed-upstream"
    SYNC_NAME_CLASH = "sync-name-clash"

    # --- serve ---
    HTTP_BAD_REQUEST = "http-bad-request"
    HTTP_BAD_HEADER = "http-bad-header"
    HTTP_BAD_TARGET = "http-bad-target"
    HTTP_METHOD_NOT_ALLOWED = "http-method-not-allowed"
    HTTP_VERSION = "http-version-not-supported"
    HTTP_REQUEST_BODY = "http-request-body"
    HTTP_REQUEST_LINE_TOO_LONG = "http-request-line-too-long"
    HTTP_HEADERS_TOO_LARGE = "http-headers-too-large"
    SERVE_PATH_REFUSED = "serve-path-refused"
    SERVE_TOO_MANY_CONNECTIONS = "serve-too-many-connections"
    SERVE_TOO_MANY_PER_ADDRESS = "serve-too-many-connections-per-address"
    SERVE_HEADER_TIMEOUT = "serve-header-timeout"
    SERVE_IDLE_TIMEOUT = "serve-idle-timeout"
    SERVE_SEND_TIMEOUT = "serve-send-timeout"
    SERVE_RATE_LIMITED = "serve-rate-limited"
    SERVE_REVISION_UNLOADABLE = "serve-revision-unloadable"
    SERVE_FILE_CHANGED = "serve-file-changed"

    # --- rsync daemon ---
    RSYNC_GREETING = "rsync-greeting"
    RSYNC_PROTOCOL_VERSION = "rsync-protocol-version"
    RSYNC_MODULE_NAME = "rsync-module-name"
    RSYNC_UNKNOWN_MODULE = "rsync-unknown-module"
    RSYNC_ARGUMENT = "rsync-argument-refused"
    RSYNC_NEGOTIATION = "rsync-negotiation-failed"
    RSYNC_READ_ONLY = "rsync-read-only"
    RSYNC_PATH = "rsync-path-refused"
    RSYNC_NO_SUCH_PATH = "rsync-no-such-path"
    RSYNC_FILTER = "rsync-filter-refused"
    RSYNC_FRAME = "rsync-frame"
    RSYNC_SUM_HEAD = "rsync-sum-head"
    RSYNC_INDEX = "rsync-index"
    RSYNC_SEQUENCE = "rsync-sequence"
    RSYNC_CLIENT_ABORT = "rsync-client-abort"
    RSYNC_EOF = "rsync-unexpected-eof"
    RSYNC_BAD_NAME = "rsync-bad-name"
    RSYNC_REVISION = "rsync-revision-unloadable"
    RSYNC_TOO_MANY_CONNECTIONS = "rsync-too-many-connections"
    RSYNC_TOO_MANY_PER_ADDRESS = "rsync-too-many-connections-per-address"
    RSYNC_HANDSHAKE_TIMEOUT = "rsync-handshake-timeout"
    RSYNC_IDLE_TIMEOUT = "rsync-idle-timeout"
    RSYNC_SESSION_TIMEOUT = "rsync-session-timeout"

    # --- rsync client (rpkirepo fetch's native rsync; rsync-wire.md §8 "output safety") ---
    RSYNC_CLIENT_CONNECT = "rsync-client-connect-failed"
    RSYNC_CLIENT_SERVER_ERROR = "rsync-client-server-error"
    RSYNC_CLIENT_PROTOCOL = "rsync-client-protocol"
    RSYNC_CLIENT_BAD_NAME = "rsync-client-bad-name"
    RSYNC_CLIENT_TIMEOUT = "rsync-client-timeout"
    RSYNC_CLIENT_CHECKSUM = "rsync-client-checksum-mismatch"
    RSYNC_CLIENT_EXTERNAL = "rsync-client-external-failed"

    # --- fetch (the relying-party side) ---
    FETCH_TAL = "fetch-tal-malformed"
    FETCH_TA_KEY_MISMATCH = "fetch-ta-key-mismatch"
    FETCH_NO_REPOSITORY = "fetch-no-usable-repository"
    FETCH_DEPTH = "fetch-depth-exceeded"
    FETCH_TOO_MANY_REPOSITORIES = "fetch-too-many-repositories"
    FETCH_TOO_MANY_CAS = "fetch-too-many-cas"
    FETCH_RUN_DEADLINE = "fetch-run-deadline"
    FETCH_REPOSITORY_DEADLINE = "fetch-repository-deadline"
    FETCH_MODULE_CLAIMED = "fetch-module-claimed"
    FETCH_MANIFEST_MISSING = "fetch-manifest-missing"
    FETCH_MANIFEST_REPLAY = "fetch-manifest-replay"
    FETCH_RRDP_FAILED = "fetch-rrdp-failed"
    FETCH_RSYNC_FAILED = "fetch-rsync-failed"
    FETCH_STALE = "fetch-using-last-good-copy"


class RpkiRepoError(Exception):
    """Root of every error the toolkit raises on purpose.

    ``reason`` is a stable :class:`Reason`; ``detail`` is a human sentence; ``context`` holds
    structured fields (a URI, a path, a limit's name) for logs and reports.
    """

    def __init__(self, reason: Reason, detail: str = "", **context: str | int | None) -> None:
        self.reason: Final[Reason] = reason
        self.detail: Final[str] = detail
        self.context: Final[dict[str, str | int | None]] = dict(context)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.context.items() if v is not None)
        parts = [f"[{self.reason.value}]"]
        if self.detail:
            parts.append(self.detail)
        if extra:
            parts.append(f"({extra})")
        return " ".join(parts)


class ProtocolError(RpkiRepoError):
    """A protocol rule was broken (abstract: raise one of the two subclasses)."""


class RemoteProtocolError(ProtocolError):
    """The peer, or untrusted input from the network or another operator, broke a rule."""


class LocalProtocolError(ProtocolError):
    """Our own caller broke a rule: API misuse, an illegal state transition."""


class LimitExceeded(RpkiRepoError):
    """A named limit (see :mod:`rpkirepo.limits`) was hit.  ``context['limit']`` names it."""


class IntegrityError(RpkiRepoError):
    """A hash did not match, or content is inconsistent with what it claims."""


class InputError(RpkiRepoError):
    """Operator-supplied input cannot be used (a file in a publish source directory)."""


class StorageError(RpkiRepoError):
    """The local filesystem failed, or holds something it should not."""


class ConfigError(RpkiRepoError):
    """Configuration file or command-line values are invalid."""
