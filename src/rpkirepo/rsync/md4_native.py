"""MD4 from the system's libcrypto, for rsync protocol 27 (openrsync), when it is there.

Protocol 27 checksums every file with MD4 (RFC 1320).  The pure-Python ``_md4`` is exact but
~400 times slower than C: at 100k objects that is a minute of CPU per cold list build or first
sync.  OpenSSL 3 still exports the legacy low-level ``MD4()`` from libcrypto (hashlib's "md4"
needs the legacy provider, which Debian does not load by default), so it is called through
ctypes; the result is checked against the pure-Python one on a test vector first, and the
pure-Python one is used whenever the library or the symbol is missing.

Not part of the sans-I/O core (finding the library runs ``ldconfig``): the adapters (the rsync
client, the daemon's tree loader) hand :func:`md4_digest`'s result to the core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

from rpkirepo.rsync._md4 import md4

__all__ = ["md4_digest"]


@functools.cache
def md4_digest() -> Callable[[bytes], bytes]:
    """The fastest correct MD4 available: libcrypto's, else the pure-Python one."""
    try:
        name = ctypes.util.find_library("crypto")
        if name is None:
            return md4
        func = ctypes.CDLL(name).MD4
    except (OSError, AttributeError):
        return md4
    func.restype = ctypes.c_void_p
    func.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]

    def digest(data: bytes) -> bytes:
        out = ctypes.create_string_buffer(16)
        func(data, len(data), out)
        return out.raw

    if digest(b"abc") != md4(b"abc") or digest(b"") != md4(b""):  # pragma: no cover
        return md4
    return digest
