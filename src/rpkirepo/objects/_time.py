"""UTCTime and GeneralizedTime, decoded strictly as the RPKI profiles require.

RFC 5280 §4.1.2.5.1: UTCTime is ``YYMMDDHHMMSSZ`` (seconds present, Zulu), YY >= 50 means 19YY.
RFC 5280 §4.1.2.5.2: GeneralizedTime is ``YYYYMMDDHHMMSSZ`` (no fractional seconds).
RFC 5652 §11.3 sets the same rules for the CMS signing-time attribute, and RFC 9286 §4.2.1 makes
the manifest times GeneralizedTime.  Both the fast path and the asn1crypto reader decode times
through :func:`decode_time` (asn1crypto itself would accept offsets and missing seconds), so the
two agree by construction and anything else is refused with ``OBJECT_BAD_TIME``.

Results are POSIX seconds (int), computed without :mod:`calendar` or :mod:`datetime` on the hot
path; :func:`to_datetime` gives the timezone-aware UTC datetime the typed values carry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

from ._der import GENERALIZED_TIME, UTC_TIME

__all__ = ["decode_time", "to_datetime"]

_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_Z: Final = 0x5A
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(Reason.OBJECT_BAD_TIME, detail)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def decode_time(tag: int, raw: bytes) -> int:
    """POSIX seconds of a UTCTime or GeneralizedTime value's contents octets."""
    if tag == UTC_TIME:
        if len(raw) != 13 or raw[12] != _Z or not raw[:12].isdigit():
            raise _bad("UTCTime is not YYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.1)")
        year, rest = divmod(int(raw[:12]), 10**10)
        year += 1900 if year >= 50 else 2000
    elif tag == GENERALIZED_TIME:
        if len(raw) != 15 or raw[14] != _Z or not raw[:14].isdigit():
            raise _bad("GeneralizedTime is not YYYYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.2)")
        year, rest = divmod(int(raw[:14]), 10**10)
        if year == 0:
            raise _bad("year 0000")
    else:
        raise _bad("not a UTCTime or GeneralizedTime")
    month, rest = divmod(rest, 10**8)
    day, rest = divmod(rest, 10**6)
    hour, rest = divmod(rest, 10**4)
    minute, second = divmod(rest, 100)
    if not 1 <= month <= 12:
        raise _bad("month out of range")
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _DAYS_IN_MONTH[month] + leap:
        raise _bad("day out of range")
    if hour > 23 or minute > 59 or second > 59:
        raise _bad("time of day out of range")
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def to_datetime(seconds: int) -> datetime:
    """The timezone-aware UTC datetime of POSIX ``seconds`` (any value decode_time returns)."""
    return _EPOCH + timedelta(seconds=seconds)
