"""MD4 (RFC 1320), needed for rsync protocol 27 checksums.

OpenSSL 3 no longer provides MD4 to ``hashlib``.  rsync at protocol < 30 uses it for the
whole-file checksum (seeded) and for ``-c`` file-list sums; the files we serve are RPKI objects
(kilobytes), so a small pure-Python implementation is fast enough, and its results are cached
per revision.  Written from the RFC's description; checked against its test vectors in tests.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["md4"]

_MASK: Final = 0xFFFFFFFF
_BLOCK: Final = struct.Struct("<16I")

# RFC 1320 §3.4: the order words are visited in rounds 2 and 3, and the shift amounts.
_R2_ORDER: Final = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
_R3_ORDER: Final = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
_R1_SHIFTS: Final = (3, 7, 11, 19)
_R2_SHIFTS: Final = (3, 5, 9, 13)
_R3_SHIFTS: Final = (3, 9, 11, 15)


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def _compress(state: list[int], block: bytes) -> None:
    x = _BLOCK.unpack(block)
    a, b, c, d = state
    for i in range(16):
        f = (b & c) | (~b & d)
        a, b, c, d = d, _rotl((a + f + x[i]) & _MASK, _R1_SHIFTS[i % 4]), b, c
    for i in range(16):
        g = (b & c) | (b & d) | (c & d)
        a, b, c, d = (
            d,
            _rotl((a + g + x[_R2_ORDER[i]] + 0x5A827999) & _MASK, _R2_SHIFTS[i % 4]),
            b,
            c,
        )
    for i in range(16):
        h = b ^ c ^ d
        a, b, c, d = (
            d,
            _rotl((a + h + x[_R3_ORDER[i]] + 0x6ED9EBA1) & _MASK, _R3_SHIFTS[i % 4]),
            b,
            c,
        )
    state[0] = (state[0] + a) & _MASK
    state[1] = (state[1] + b) & _MASK
    state[2] = (state[2] + c) & _MASK
    state[3] = (state[3] + d) & _MASK


def md4(data: bytes) -> bytes:
    """The 16-byte MD4 digest of ``data``."""
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    bit_len = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", bit_len)
    view = memoryview(padded)
    for off in range(0, len(padded), 64):
        _compress(state, bytes(view[off : off + 64]))
    return struct.pack("<4I", *state)
