"""The one place foreign exceptions become ours.

asn1crypto parses lazily: a malformed object often loads fine and raises ``ValueError``,
``TypeError``, ``KeyError``, ``IndexError`` ... only when a field is first touched, deep inside the
reader.  Every piece of code that touches asn1crypto values runs inside :func:`map_exceptions`,
which turns those into :class:`~rpkirepo.errors.RemoteProtocolError` (``OBJECT_MALFORMED`` unless
told otherwise) and lets the toolkit's own errors pass untouched, so callers only ever see
:class:`~rpkirepo.errors.RpkiRepoError` subclasses (the httpcore pattern).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError, RpkiRepoError

__all__ = ["FOREIGN_ERRORS", "map_exceptions"]

#: What asn1crypto (and the stdlib calls on its values: int(), bytes.decode(), ipaddress) raise
#: on bad input.  RecursionError is listed as a second line of defence only: the TLV walker bounds
#: nesting before asn1crypto sees the bytes.
FOREIGN_ERRORS: Final = (
    ValueError,  # includes UnicodeDecodeError and ipaddress errors
    TypeError,
    LookupError,  # KeyError, IndexError
    AttributeError,
    ArithmeticError,  # OverflowError
    NotImplementedError,
    RecursionError,
)


@contextmanager
def map_exceptions(what: str, reason: Reason = Reason.OBJECT_MALFORMED) -> Iterator[None]:
    """Run a block that reads untrusted values; re-raise foreign errors as RemoteProtocolError.

    ``what`` names the part being read (``"ROA eContent"``) for the error detail.
    """
    try:
        yield
    except RpkiRepoError:
        raise
    except FOREIGN_ERRORS as exc:
        message = str(exc)
        if len(message) > 200:
            message = message[:200] + "..."
        raise RemoteProtocolError(reason, f"{what}: {type(exc).__name__}: {message}") from exc
