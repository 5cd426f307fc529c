"""Trust anchor locators (RFC 8630 §2.2), read with hard limits.

A TAL is operator input, but it is often downloaded from a registry's web site, so it is parsed
as untrusted text: optional ``#`` comment lines, one or more TA certificate URIs (``rsync://`` or
``https://``, one a line), an empty line, then the base64 DER SubjectPublicKeyInfo of the TA's
key, possibly wrapped.  Anything else is ``fetch-tal-malformed``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import keys

from rpkirepo.errors import InputError, Reason, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = ["TrustAnchorLocator", "parse_tal", "read_tal"]

#: A TAL is a few hundred bytes; a megabyte is a file that is something else.
_MAX_TAL_BYTES = 1 << 20


# ---- TrustAnchorLocator --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrustAnchorLocator:
    """One TAL: its name (the file stem), the TA certificate's URIs in the order given (RFC 8630
    §2.2: an RP tries them in order; we try https first, §2.3), and the TA key's SPKI."""

    name: str
    uris: tuple[RsyncUri | HttpsUri, ...]
    spki_der: bytes

    @property
    def ordered_uris(self) -> tuple[RsyncUri | HttpsUri, ...]:
        """https URIs first (RFC 8630 §2.3 recommends them), then rsync, each in TAL order."""
        return tuple(u for u in self.uris if isinstance(u, HttpsUri)) + tuple(
            u for u in self.uris if isinstance(u, RsyncUri)
        )


def _fail(detail: str, name: str, **context: str) -> InputError:
    return InputError(Reason.FETCH_TAL, detail, tal=name, **context)


def parse_tal(data: bytes, name: str, *, limits: Limits = DEFAULT_LIMITS) -> TrustAnchorLocator:
    """Parse the bytes of a TAL file called ``name``."""
    if len(data) > _MAX_TAL_BYTES:
        raise _fail("file too large for a TAL", name)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _fail("not ASCII text", name) from exc
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    uris: list[RsyncUri | HttpsUri] = []
    while i < len(lines) and lines[i].strip():
        line = lines[i].strip()
        try:
            if line.startswith("rsync://"):
                uris.append(RsyncUri.parse(line, max_length=limits.max_uri_length))
            elif line.startswith("https://"):
                uris.append(HttpsUri.parse(line, max_length=limits.max_uri_length))
            else:
                raise _fail("a TA URI must be rsync:// or https:// (RFC 8630 §2.2)", name)
        except InputError:
            raise
        except RpkiRepoError as exc:
            raise _fail(f"bad TA URI: {exc}", name, uri=line[:200]) from exc
        i += 1
    if not uris:
        raise _fail("no TA certificate URI", name)
    if any(u.uri.endswith("/") for u in uris):
        raise _fail("a TA URI names a directory, not a certificate", name)
    if i >= len(lines):
        raise _fail("no empty line before the key", name)
    key_text = "".join(line.strip() for line in lines[i + 1 :])
    if not key_text:
        raise _fail("no subjectPublicKeyInfo", name)
    try:
        spki = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail("the key is not valid base64", name) from exc
    try:
        parsed = keys.PublicKeyInfo.load(spki, strict=True)
        parsed.native  # noqa: B018 (decode everything now: a bad key fails here)
    except (ValueError, TypeError) as exc:
        raise _fail("the key is not a DER SubjectPublicKeyInfo", name) from exc
    return TrustAnchorLocator(name, tuple(uris), spki)


def read_tal(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> TrustAnchorLocator:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_TAL_BYTES + 1)
    except OSError as exc:
        raise InputError(Reason.FETCH_TAL, f"cannot read: {exc.strerror}", tal=str(path)) from exc
    return parse_tal(data, path.stem, limits=limits)
