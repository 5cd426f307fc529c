"""rsync wire primitives: integers, strings, file-list indexes and multiplexed frames.

Everything is little-endian.  Decoders work on a :class:`Buffer` with commit/rollback: a reader
either consumes a complete item or raises :class:`NeedData` and the caller rolls back, so input can
arrive one byte at a time.  Every length read from the peer is checked against a cap before
anything is allocated for it.

References (facts only, no code): rsync io.c (``write_varint``, ``write_varlong``,
``write_ndx``/``read_ndx``, ``write_vstring``), rsync.h (``MPLEX_BASE``, ``MSG_*``, ``NDX_*``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

__all__ = [
    "MPLEX_BASE",
    "NDX_DEL_STATS",
    "NDX_DONE",
    "Buffer",
    "Msg",
    "NdxReader",
    "NdxWriter",
    "NeedData",
    "frame",
    "int32",
    "longint",
    "read_varint",
    "read_varlong",
    "varint",
    "varlong",
    "vstring",
]

MPLEX_BASE: Final = 7
MAX_FRAME_PAYLOAD: Final = 0xFFFFFF
NDX_DONE: Final = -1
NDX_DEL_STATS: Final = -3

_I32: Final = struct.Struct("<i")
_I32X4: Final = struct.Struct("<4i")
_U32: Final = struct.Struct("<I")
_I64: Final = struct.Struct("<q")


class Msg(IntEnum):
    """Multiplex tags (rsync.h ``enum msgcode``)."""

    DATA = 0
    ERROR_XFER = 1
    INFO = 2
    ERROR = 3
    WARNING = 4
    IO_ERROR = 22
    IO_TIMEOUT = 33
    NOOP = 42
    ERROR_EXIT = 86


class NeedData(Exception):
    """The buffer holds less than a complete item; roll back and wait for more bytes."""


class Buffer:
    """A byte buffer with a read position that can be committed or rolled back."""

    __slots__ = ("_data", "_mark", "_pos", "consumed")

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0
        self._mark = 0
        #: Bytes committed so far (deterministic whatever the input split).
        self.consumed = 0

    def __len__(self) -> int:
        return len(self._data) - self._mark

    def feed(self, data: bytes) -> None:
        self._data += data

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise NeedData
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return out

    def skip(self, n: int) -> None:
        end = self._pos + n
        if end > len(self._data):
            raise NeedData
        self._pos = end

    def available(self) -> int:
        return len(self._data) - self._pos

    def find(self, sub: bytes, limit: int) -> int:
        """Offset (from the read position) of ``sub`` within the next ``limit`` bytes, or -1."""
        i = self._data.find(sub, self._pos, self._pos + limit + len(sub))
        return -1 if i < 0 else i - self._pos

    def u8(self) -> int:
        if self._pos >= len(self._data):
            raise NeedData
        b = self._data[self._pos]
        self._pos += 1
        return b

    def i32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._data):
            raise NeedData
        self._pos = pos + 4
        return int(_I32.unpack_from(self._data, pos)[0])

    def i32x4(self) -> tuple[int, int, int, int]:
        pos = self._pos
        if pos + 16 > len(self._data):
            raise NeedData
        self._pos = pos + 16
        a, b, c, d = _I32X4.unpack_from(self._data, pos)
        return int(a), int(b), int(c), int(d)

    def u16(self) -> int:
        b = self.take(2)
        return b[0] | b[1] << 8

    def commit(self) -> None:
        self.consumed += self._pos - self._mark
        self._mark = self._pos
        if self._mark == len(self._data):
            if self._mark:
                # All read: drop the storage too, so an idle session holds none.
                self._data = bytearray()
                self._pos = self._mark = 0
        elif self._mark > 16384 and self._mark * 2 > len(self._data):
            del self._data[: self._mark]
            self._pos -= self._mark
            self._mark = 0

    def rollback(self) -> None:
        self._pos = self._mark


def int32(n: int) -> bytes:
    return _I32.pack(n)


def longint(n: int) -> bytes:
    """Protocol < 30 64-bit value: int32, or ``FF FF FF FF`` + int64 when it does not fit."""
    if 0 <= n <= 0x7FFFFFFF:
        return _I32.pack(n)
    return b"\xff\xff\xff\xff" + _I64.pack(n)


def _var(x: int, min_bytes: int, width: int) -> bytes:
    raw = (x % (1 << (8 * width))).to_bytes(width, "little")
    cnt = width
    while cnt > min_bytes and raw[cnt - 1] == 0:
        cnt -= 1
    bit = 1 << (7 - cnt + min_bytes)
    top = raw[cnt - 1]
    if top >= bit:
        return bytes([~(bit - 1) & 0xFF]) + raw[:cnt]
    if cnt > min_bytes:
        return bytes([(top | ~(bit * 2 - 1)) & 0xFF]) + raw[: cnt - 1]
    return bytes([top]) + raw[: cnt - 1]


def varint(x: int) -> bytes:
    """rsync ``write_varint`` (32-bit value, 1 to 5 bytes)."""
    return _var(x, 1, 4)


def varlong(x: int, min_bytes: int) -> bytes:
    """rsync ``write_varlong`` (64-bit value, at least ``min_bytes`` bytes)."""
    return _var(x, min_bytes, 8)


def _leading_ones(b: int) -> int:
    n = 0
    while n < 8 and b & (0x80 >> n):
        n += 1
    return n


def read_varint(buf: Buffer) -> int:
    first = buf.u8()
    extra = _leading_ones(first)
    if extra > 4:
        raise RemoteProtocolError(Reason.RSYNC_FRAME, "overlong varint")
    low = buf.take(extra)
    top = first & ((1 << (8 - extra)) - 1) if extra < 8 else 0
    value = int.from_bytes(low + bytes([top]), "little")
    if value >= 1 << 31:
        value -= 1 << 32
    return value


def read_varlong(buf: Buffer, min_bytes: int) -> int:
    first = buf.u8()
    low = buf.take(min_bytes - 1)
    extra = _leading_ones(first)
    if extra > 9 - min_bytes:
        raise RemoteProtocolError(Reason.RSYNC_FRAME, "overlong varlong")
    more = buf.take(extra)
    top = first & ((1 << (8 - extra)) - 1) if extra < 8 else 0
    value = int.from_bytes(low + more + bytes([top]), "little")
    if value >= 1 << 63:
        raise RemoteProtocolError(Reason.RSYNC_FRAME, "varlong out of range")
    return value


def vstring(data: bytes) -> bytes:
    n = len(data)
    if n > 0x7FFF:
        raise ValueError("vstring too long")
    head = bytes([n]) if n < 0x80 else bytes([0x80 | n >> 8, n & 0xFF])
    return head + data


def read_vstring(buf: Buffer, limit: int) -> bytes:
    n = buf.u8()
    if n & 0x80:
        n = (n & 0x7F) << 8 | buf.u8()
    if n > limit:
        raise RemoteProtocolError(Reason.RSYNC_FRAME, "string too long", length=n)
    return buf.take(n)


def frame_head(tag: Msg, n: int) -> bytes:
    """The header of a multiplexed frame of ``n`` bytes: LE32 ``((MPLEX_BASE + tag) << 24) |
    n``."""
    if not 0 <= n <= MAX_FRAME_PAYLOAD:
        raise ValueError("frame too long")
    return _U32.pack(((MPLEX_BASE + tag) << 24) | n)


def frame(tag: Msg, payload: bytes | bytearray | memoryview) -> bytes:
    """One multiplexed frame: :func:`frame_head` + payload."""
    return frame_head(tag, len(payload)) + bytes(payload)


def frame_header(raw: int) -> tuple[int, int]:
    """(tag, length) of a frame header read as a little-endian unsigned 32-bit value."""
    return (raw >> 24) - MPLEX_BASE, raw & 0xFFFFFF


@dataclass(slots=True)
class NdxWriter:
    """rsync ``write_ndx`` state (protocol >= 30): deltas against the previous value sent."""

    prev_pos: int = -1
    prev_neg: int = 1

    def encode(self, ndx: int) -> bytes:
        if ndx == NDX_DONE:
            return b"\x00"
        out = bytearray()
        if ndx >= 0:
            diff = ndx - self.prev_pos
            self.prev_pos = ndx
            n = ndx
        else:
            out.append(0xFF)
            n = -ndx
            diff = n - self.prev_neg
            self.prev_neg = n
        if 0 < diff < 0xFE:
            out.append(diff)
        elif 0 <= diff <= 0x7FFF:
            out += bytes([0xFE, diff >> 8, diff & 0xFF])
        else:
            out += bytes([0xFE, (n >> 24) | 0x80, n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF])
        return bytes(out)


@dataclass(slots=True)
class NdxReader:
    """rsync ``read_ndx`` state (protocol >= 30).  Commit-safe: state changes only on success."""

    prev_pos: int = -1
    prev_neg: int = 1

    def decode(self, buf: Buffer) -> int:
        b = buf.u8()
        if b == 0:
            return NDX_DONE
        negative = b == 0xFF
        if negative:
            b = buf.u8()
        prev = self.prev_neg if negative else self.prev_pos
        if b == 0xFE:
            hi, lo = buf.u8(), buf.u8()
            if hi & 0x80:
                rest = buf.take(2)
                n = (hi & 0x7F) << 24 | lo | rest[0] << 8 | rest[1] << 16
            else:
                n = prev + (hi << 8 | lo)
        else:
            n = prev + b
        if negative:
            self.prev_neg = n
            return -n
        self.prev_pos = n
        return n
