"""Trust anchor locators (RFC 8630 §2.2): optional comments, the TA certificate's URIs (rsync or
HTTPS, one a line), an empty line, and the base64 SubjectPublicKeyInfo of the TA's key."""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Sequence

__all__ = ["encode_tal"]


def encode_tal(uris: Sequence[str], spki_der: bytes, comments: Sequence[str] = ()) -> bytes:
    if not uris:
        raise ValueError("a TAL needs at least one URI")
    for uri in uris:
        if not uri.startswith(("rsync://", "https://")) or any(c.isspace() for c in uri):
            raise ValueError(f"bad TA URI {uri!r} (RFC 8630 §2.2: rsync or https)")
    key = "\n".join(textwrap.wrap(base64.b64encode(spki_der).decode("ascii"), 64))
    head = [f"# {c}" for c in comments]
    return ("\n".join([*head, *uris, "", key]) + "\n").encode("ascii")
