"""Manifests (RFC 9286 §4.2): the eContent listing every file of a publication point.

Manifest ::= SEQUENCE { version [0] INTEGER DEFAULT 0 (omitted, DER), manifestNumber,
thisUpdate, nextUpdate (GeneralizedTime), fileHashAlg id-sha256, fileList SEQUENCE OF
FileAndHash { file IA5String, hash BIT STRING } }.  Entries are written in file-name order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from . import der

__all__ = ["encode_manifest"]

_OID_SHA256: Final = "2.16.840.1.101.3.4.2.1"  # RFC 9286 §4.2.1, RFC 7935 §2


def encode_manifest(
    number: int, this_update: datetime, next_update: datetime, files: Mapping[str, bytes]
) -> bytes:
    """The eContent for ``files`` (name -> content; hashed here with SHA-256)."""
    if not 0 <= number < 2**159:  # at most 20 octets (RFC 9286 §4.2.1)
        raise ValueError("manifestNumber out of range")
    if this_update >= next_update:
        raise ValueError("thisUpdate must precede nextUpdate (RFC 9286 §4.2.1)")
    entries = [
        der.sequence(der.ia5_string(n), der.bit_string(hashlib.sha256(files[n]).digest()))
        for n in sorted(files)
    ]
    return der.sequence(
        der.integer(number),
        der.generalized_time(this_update),
        der.generalized_time(next_update),
        der.oid(_OID_SHA256),
        der.sequence(*entries),
    )
