"""The TLV walker (X.690) and the strict time decoder, byte by byte."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.objects._der import (
    GENERALIZED_TIME,
    MAX_DEPTH,
    UTC_TIME,
    Der,
    encode_oid,
)
from rpkirepo.objects._framing import frame, geofeed_signature, is_text
from rpkirepo.objects._time import decode_time, to_datetime


def _refused(data: bytes, reason: Reason = Reason.OBJECT_MALFORMED) -> None:
    der = Der(data)
    with pytest.raises(RemoteProtocolError) as info:
        der.walk(der.tlv(0, len(data)))
    assert info.value.reason is reason


# --- lengths (X.690 §8.1.3) -----------------------------------------------------------------------
def test_short_long_and_indefinite_lengths() -> None:
    der = Der(bytes.fromhex("3003020105"))
    assert der.tlv(0, 5) == (0x30, 2, 5, 5)
    long_form = bytes.fromhex("3081030201ff")
    assert Der(long_form).tlv(0, 6) == (0x30, 3, 6, 6)
    four = bytes.fromhex("3084000000030201ff")
    assert Der(four).tlv(0, len(four)) == (0x30, 6, 9, 9)
    indefinite = bytes.fromhex("30800201050000")
    assert Der(indefinite).tlv(0, 7) == (0x30, 2, 5, 7)
    nested = bytes.fromhex("3080 3080 020101 0000 020102 0000".replace(" ", ""))
    der = Der(nested)
    outer = der.tlv(0, len(nested))
    assert outer[3] == len(nested)
    inner, second = der.children(outer)
    assert der.raw(second) == b"\x02"
    assert [der.raw(k) for k in der.children(inner)] == [b"\x01"]
    assert der.walk(outer) == 4


def test_bad_lengths() -> None:
    _refused(bytes.fromhex("3005020101"))  # runs past the end
    _refused(bytes.fromhex("30850000000000"))  # 5 length octets
    _refused(bytes.fromhex("3008 0485 0000000001 ff".replace(" ", "")))  # ... inside a value
    _refused(bytes.fromhex("3080 0485 0000000001 ff 0000".replace(" ", "")))  # ... indefinite
    _refused(bytes.fromhex("30ff"))  # reserved
    _refused(bytes.fromhex("3082"))  # truncated length
    _refused(bytes.fromhex("30"))  # no length
    _refused(bytes.fromhex("0480"))  # indefinite on a primitive
    _refused(bytes.fromhex("3080020101"))  # no end-of-contents
    _refused(bytes.fromhex("30800201010001"))  # broken end-of-contents
    _refused(bytes.fromhex("3004 3003 020101".replace(" ", "")))  # child overruns parent
    _refused(bytes.fromhex("3002 0000".replace(" ", "")))  # end-of-contents where none belongs


def test_high_tag_numbers() -> None:
    data = bytes.fromhex("bf8101 03 020101".replace(" ", ""))  # [129] constructed
    der = Der(data)
    tag, _, _, end = der.tlv(0, len(data))
    assert end == len(data) and tag > 0xFF
    _refused(bytes.fromhex("1f8181818101 00".replace(" ", "")))  # tag number of 5 octets
    _refused(bytes.fromhex("1f81"))  # truncated tag


def test_depth_is_capped_without_recursion_errors() -> None:
    ok = b"\x30\x80" * (MAX_DEPTH - 1) + b"\x00\x00" * (MAX_DEPTH - 1)
    der = Der(ok)
    der.walk(der.tlv(0, len(ok)))
    for depth in (MAX_DEPTH + 1, 5000, 200_000):
        _refused(b"\x30\x80" * depth + b"\x00\x00" * depth)
    deep = b"\x30\x00"  # definite lengths: walk() caps the depth too
    for _ in range(200):
        body = deep
        deep = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    _refused(deep)


def test_indefinite_ends_are_memoised() -> None:
    """Wide + deep indefinite nesting: each level scanned once (this would take minutes
    without the memo); and a memoised end beyond a smaller limit is still refused."""
    body = b"\x04\x01\x00" * 20_000
    data = b"\x30\x80" * 30 + body + b"\x00\x00" * 30
    der = Der(data)
    outer = der.tlv(0, len(data))
    node = outer
    for _ in range(29):
        node = der.children(node)[0]
    assert node[2] - node[1] == len(body)


def test_constructed_strings() -> None:
    data = bytes.fromhex("2480 0402abcd 2480 0401ef 0000 0000".replace(" ", ""))
    der = Der(data)
    assert der.string(der.tlv(0, len(data))) == bytes.fromhex("abcdef")
    definite = bytes.fromhex("2408 0402abcd 0402ef01".replace(" ", ""))
    der = Der(definite)
    assert der.string(der.tlv(0, len(definite))) == bytes.fromhex("abcdef01")
    wrong = bytes.fromhex("2404 0302abcd".replace(" ", ""))  # a BIT STRING segment
    der = Der(wrong)
    with pytest.raises(RemoteProtocolError):
        der.string(der.tlv(0, len(wrong)))
    primitive = bytes.fromhex("0402abcd")
    der = Der(primitive)
    assert der.string(der.tlv(0, 4)) == bytes.fromhex("abcd")
    with pytest.raises(RemoteProtocolError):
        der.children(der.tlv(0, 4))


def test_children_fast_path_matches_the_general_reader() -> None:
    data = bytes.fromhex("3011 020101 3081020500 3080 0000 bf1f00 0400".replace(" ", ""))
    der = Der(data)
    outer = der.tlv(0, len(data))
    kids = der.children(outer)
    pos = outer[1]
    for kid in kids:
        assert kid == Der(data).tlv(pos, outer[2])
        pos = kid[3]
    assert pos == outer[2]


def test_encode_oid() -> None:
    assert encode_oid("1.2.840.113549.1.7.2") == bytes.fromhex("2a864886f70d010702")
    assert encode_oid("2.16.840.1.101.3.4.2.1") == bytes.fromhex("608648016503040201")
    assert encode_oid("1.3.6.1.5.5.7.3.30") == bytes.fromhex("2b060105050703 1e".replace(" ", ""))


# --- the frame ------------------------------------------------------------------------------------
def test_frame() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        frame(b"", 100)
    assert info.value.reason is Reason.OBJECT_EMPTY
    with pytest.raises(RemoteProtocolError) as info:
        frame(b"3003020101", 100)  # hex text
    assert info.value.reason is Reason.OBJECT_TEXT
    with pytest.raises(RemoteProtocolError) as info:
        frame(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 100)
    assert info.value.reason is Reason.OBJECT_TEXT
    with pytest.raises(RemoteProtocolError) as info:
        frame(bytes.fromhex("020101"), 100)  # not a SEQUENCE
    assert info.value.reason is Reason.OBJECT_MALFORMED
    with pytest.raises(RemoteProtocolError) as info:
        frame(bytes.fromhex("300302010100"), 100)
    assert info.value.reason is Reason.OBJECT_TRAILING_DATA
    with pytest.raises(RemoteProtocolError) as info:
        frame(b"0A" + b"x" * 80, 100)  # text that starts like a SEQUENCE
    assert info.value.reason is Reason.OBJECT_TEXT
    der, outer, geofeed = frame(bytes.fromhex("3003020101"), 100)
    assert outer == (0x30, 2, 5, 5) and not geofeed and der.data == bytes.fromhex("3003020101")


def test_is_text() -> None:
    assert is_text(b"MIIB\r\n\tabc")
    assert is_text("Zürich,CH\n".encode())
    assert not is_text(b"\x30\x03\x02\x01\x01")
    assert not is_text(b"abc\xff")  # not UTF-8


def test_geofeed_signature_block() -> None:
    sig = b"MAMCAQE="  # base64 of 30 03 02 01 01
    good = b"192.0.2.0/24,NL,,,\r\n# RPKI Signature: 192.0.2.0/24\r\n# " + sig
    good += b"\r\n# End Signature: 192.0.2.0/24\r\n"
    assert geofeed_signature(good) == bytes.fromhex("3003020101")
    assert geofeed_signature(b"192.0.2.0/24,NL,,,\n") is None
    assert geofeed_signature(b"x # RPKI Signature: not at line start\n") is None
    for bad in (
        good.replace(b"# End Signature: 192.0.2.0/24\r\n", b""),  # no end line
        good + b"more,text\n",  # text after the block
        good.replace(sig, b"M!!!"),  # bad base64
        good.replace(b"# " + sig, sig),  # a line without '#'
    ):
        with pytest.raises(RemoteProtocolError) as info:
            geofeed_signature(bad)
        assert info.value.reason is Reason.OBJECT_MALFORMED
    der, _, geofeed = frame(good, 1000)
    assert geofeed and der.data == bytes.fromhex("3003020101")
    der, _, geofeed = frame(b"0.0.0.0/0,ZZ,,,\n" + good, 1000)  # a CSV that starts with "0"
    assert geofeed and der.data == bytes.fromhex("3003020101")
    for inner in (b"AgEB", b"MAMCAQEA"):  # an INTEGER; a SEQUENCE with a trailing byte
        with pytest.raises(RemoteProtocolError):
            frame(good.replace(sig, inner), 1000)


# --- times (RFC 5280 §4.1.2.5) --------------------------------------------------------------------
def test_decode_time_examples() -> None:
    assert decode_time(UTC_TIME, b"700101000000Z") == 0
    assert decode_time(UTC_TIME, b"491231235959Z") == calendar.timegm((2049, 12, 31, 23, 59, 59))
    assert decode_time(UTC_TIME, b"500101000000Z") == calendar.timegm((1950, 1, 1, 0, 0, 0))
    assert decode_time(GENERALIZED_TIME, b"20240229120000Z") == calendar.timegm(
        (2024, 2, 29, 12, 0, 0)
    )
    assert decode_time(GENERALIZED_TIME, b"20000229000000Z") > 0  # 2000 is a leap year
    assert decode_time(GENERALIZED_TIME, b"99991231235959Z") == 253402300799
    assert to_datetime(decode_time(GENERALIZED_TIME, b"00010101000000Z")) == datetime(
        1, 1, 1, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("tag", "raw"),
    [
        (UTC_TIME, b"2402290000Z"),  # no seconds
        (UTC_TIME, b"240229000000+0100"),  # offset
        (UTC_TIME, b"240229000000z"),
        (UTC_TIME, b"23022900000 Z"),
        (UTC_TIME, b"230229000000Z"),  # not a leap year
        (UTC_TIME, b"241301000000Z"),
        (UTC_TIME, b"240001000000Z"),
        (UTC_TIME, b"240100000000Z"),
        (UTC_TIME, b"240131240000Z"),
        (UTC_TIME, b"240131236000Z"),
        (UTC_TIME, b"240131235960Z"),  # no leap seconds
        (GENERALIZED_TIME, b"21000229000000Z"),  # 2100 is not a leap year
        (GENERALIZED_TIME, b"20240229000000.5Z"),  # fractional seconds
        (GENERALIZED_TIME, b"00000101000000Z"),
        (GENERALIZED_TIME, b"-0240229000000Z"),
        (0x04, b"20240229000000Z"),  # not a time type
    ],
)
def test_decode_time_refusals(tag: int, raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_time(tag, raw)
    assert info.value.reason is Reason.OBJECT_BAD_TIME


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
def test_decode_time_matches_the_calendar(moment: datetime) -> None:
    moment = moment.replace(microsecond=0)
    expected = calendar.timegm(moment.timetuple())
    rest = f"{moment:%m%d%H%M%S}Z"
    assert decode_time(GENERALIZED_TIME, f"{moment.year:04d}{rest}".encode()) == expected
    if 1950 <= moment.year <= 2049:
        assert decode_time(UTC_TIME, f"{moment.year % 100:02d}{rest}".encode()) == expected
    assert to_datetime(expected) == moment.replace(tzinfo=UTC)
