"""RrdpParser: every wire rule of rrdp-checklist §0 and the hostile catalogue (c)1-10, 21, 24, 26,
27, one test each, plus chunking invariance and fuzzing (h11's rule: only our errors escape)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpkirepo.errors import (
    LimitExceeded,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    RpkiRepoError,
)
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rrdp.model import (
    FileKind,
    NotificationFile,
    PublishElement,
    RrdpFileHeader,
    SessionId,
    Sha256,
    WithdrawElement,
)
from rpkirepo.rrdp.parser import (
    NEED_DATA,
    EndOfFile,
    RrdpEvent,
    RrdpParser,
    _DigestSet,
    iter_events,
    parse_notification,
)

SESSION = "e9be21e7-c537-4564-b742-64700978c6b4"
NS = 'xmlns="http://www.ripe.net/rpki/rrdp"'
OBJECT = bytes(range(256)) * 2  # 512 bytes, above the 100-byte minimum
B64 = base64.b64encode(OBJECT).decode()
HASH = "ab" * 32
URI = "rsync://rpki.example.net/repo/ca/a.roa"
SNAP_URI = "https://rrdp.example.net/s/1/snapshot.xml"


def root(kind: str, body: str, *, serial: str = "7", attrs: str | None = None) -> bytes:
    head = attrs if attrs is not None else f'{NS} version="1" session_id="{SESSION}"'
    return f'<{kind} {head} serial="{serial}">{body}</{kind}>'.encode()


def snapshot(body: str, **kw: str) -> bytes:
    return root("snapshot", body, **kw)


def delta(body: str, **kw: str) -> bytes:
    return root("delta", body, **kw)


def notification(body: str, **kw: str) -> bytes:
    return root("notification", body, **kw)


def publish(uri: str = URI, text: str = B64, extra: str = "") -> str:
    return f'<publish uri="{uri}"{extra}>{text}</publish>'


def withdraw(uri: str = URI, hash_: str = HASH) -> str:
    return f'<withdraw uri="{uri}" hash="{hash_}"/>'


SNAP_REF = f'<snapshot uri="{SNAP_URI}" hash="{HASH}"/>'


def delta_ref(serial: int) -> str:
    return f'<delta serial="{serial}" uri="https://rrdp.example.net/d/{serial}.xml" hash="{HASH}"/>'


def parse(data: bytes, expect: FileKind | None = None, **kw: object) -> list[RrdpEvent]:
    return list(iter_events([data], expect, **kw))  # type: ignore[arg-type]


def refusal(data: bytes, expect: FileKind | None = None, **kw: object) -> RpkiRepoError:
    with pytest.raises(RpkiRepoError) as info:
        parse(data, expect, **kw)
    return info.value


def reason(data: bytes, expect: FileKind | None = None, **kw: object) -> Reason:
    return refusal(data, expect, **kw).reason


def events_of(parser: RrdpParser) -> Iterator[RrdpEvent]:
    while (event := parser.next_event()) is not NEED_DATA:
        yield event


def feed_in_chunks(data: bytes, sizes: list[int], **kw: object) -> list[RrdpEvent]:
    parser = RrdpParser(**kw)  # type: ignore[arg-type]
    out: list[RrdpEvent] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        parser.feed(data[pos : pos + size])
        out.extend(events_of(parser))
        pos += size
        i += 1
    parser.close()
    out.extend(events_of(parser))
    return out


def relaxed(**values: int) -> Limits:
    return DEFAULT_LIMITS.override(values)


# --------------------------------------------------------------------------- accepted input


def test_snapshot_events_in_order() -> None:
    data = snapshot(publish() + "\n" + publish(uri=URI.replace("a.roa", "b.roa")))
    events = parse(data, FileKind.SNAPSHOT)
    assert events[0] == RrdpFileHeader(FileKind.SNAPSHOT, SessionId(SESSION), 7)
    assert [type(e) for e in events[1:]] == [PublishElement, PublishElement, EndOfFile]
    first = events[1]
    assert isinstance(first, PublishElement)
    assert first.uri.uri == URI and first.data == OBJECT and first.hash is None
    assert events[-1] == EndOfFile(FileKind.SNAPSHOT, Sha256.of(data), len(data), 2)


def test_delta_publish_with_hash_and_withdraw() -> None:
    other = URI.replace("a.roa", "b.roa")
    data = delta(publish(extra=f' hash="{HASH}"') + withdraw(uri=other))
    events = parse(data, FileKind.DELTA)
    replaced = events[1]
    assert isinstance(replaced, PublishElement)
    assert (replaced.uri.uri, replaced.data, replaced.hash) == (URI, OBJECT, Sha256.from_hex(HASH))
    removed = events[2]
    assert isinstance(removed, WithdrawElement)
    assert (removed.uri.uri, removed.hash) == (other, Sha256.from_hex(HASH))
    assert events[3] == EndOfFile(FileKind.DELTA, Sha256.of(data), len(data), 2)


def test_notification_is_one_event_then_end_of_file() -> None:
    data = notification(SNAP_REF + delta_ref(7) + delta_ref(6))
    events = parse(data)
    assert len(events) == 2
    note = events[0]
    assert isinstance(note, NotificationFile)
    assert note.session_id == SessionId(SESSION) and note.serial == 7
    assert note.snapshot.uri.uri == SNAP_URI
    assert [d.serial for d in note.deltas] == [7, 6]
    assert events[1] == EndOfFile(FileKind.NOTIFICATION, Sha256.of(data), len(data), 2)
    assert parse_notification(data) == note


def test_empty_snapshot_is_fine() -> None:
    data = snapshot("")
    assert parse(data)[1:] == [EndOfFile(FileKind.SNAPSHOT, Sha256.of(data), len(data), 0)]


def test_xml_declaration_comments_and_whitespace_are_fine() -> None:
    data = (
        b'<?xml version="1.0" encoding="US-ASCII"?>\n<!-- licence -->\n'
        + snapshot(f"\n  <!-- c -->\n  {publish()}\r\n\t")
        + b"\n<!-- trailer -->\n"
    )
    assert isinstance(parse(data)[1], PublishElement)


def test_base64_whitespace_is_removed_everywhere() -> None:
    wrapped = "\n".join(B64[i : i + 64] for i in range(0, len(B64), 64))
    for text in (f"\n   {wrapped}\n   ", B64[:10] + " \t\r\n " + B64[10:], f"<![CDATA[{B64}]]>"):
        event = parse(snapshot(publish(text=text)))[1]
        assert isinstance(event, PublishElement) and event.data == OBJECT


def test_child_may_repeat_the_rrdp_namespace() -> None:
    # rpki-client's regress snapshot.xml does this; rpki-client accepts it too.
    event = parse(snapshot(publish(extra=f" {NS}")))[1]
    assert isinstance(event, PublishElement)


def test_upper_case_session_and_hash_are_fine() -> None:
    data = notification(
        SNAP_REF.replace(HASH, HASH.upper()),
        attrs=f'{NS} version="1" session_id="{SESSION.upper()}"',
    )
    note = parse(data)[0]
    assert isinstance(note, NotificationFile) and note.snapshot.hash == Sha256.from_hex(HASH)


def test_expected_session_compares_case_insensitively() -> None:
    events = parse(snapshot(""), expected_session=SessionId(SESSION.upper()), expected_serial=7)
    assert isinstance(events[0], RrdpFileHeader)


def test_sha256_and_size_cover_every_byte_fed() -> None:
    data = snapshot(publish()) + b"\n\n"
    parser = RrdpParser()
    parser.feed(data[:10])
    assert parser.size == 10 and parser.sha256 == Sha256.of(data[:10])
    parser.feed(bytearray(data[10:20]))
    parser.feed(memoryview(data[20:]))
    parser.close()
    assert parser.sha256 == Sha256.of(data) and parser.size == len(data)
    assert list(events_of(parser))[-1] == EndOfFile(
        FileKind.SNAPSHOT, Sha256(hashlib.sha256(data).digest()), len(data), 1
    )


def test_need_data_until_enough_input_then_after_end_of_file() -> None:
    parser = RrdpParser()
    assert parser.next_event() is NEED_DATA
    parser.feed(snapshot(publish()))
    parser.close()
    events = list(events_of(parser))
    assert isinstance(events[-1], EndOfFile)
    assert parser.next_event() is NEED_DATA
    assert parser.next_event() is NEED_DATA


# --------------------------------------------------------------------------- API misuse


def test_feed_or_close_after_close_is_local_error() -> None:
    parser = RrdpParser()
    parser.feed(snapshot(""))
    parser.close()
    with pytest.raises(LocalProtocolError):
        parser.feed(b" ")
    with pytest.raises(LocalProtocolError):
        parser.close()


def test_parser_is_dead_after_an_error() -> None:
    parser = RrdpParser()
    parser.feed(snapshot("", attrs=f'version="1" session_id="{SESSION}"'))  # no namespace
    with pytest.raises(RemoteProtocolError):
        parser.close()
    for call in (lambda: parser.feed(b"x"), parser.close, parser.next_event):
        with pytest.raises(LocalProtocolError):
            call()


def test_feed_takes_bytes_only() -> None:
    with pytest.raises(LocalProtocolError):
        RrdpParser().feed("<snapshot/>")  # type: ignore[arg-type]


def test_expect_must_be_a_file_kind() -> None:
    with pytest.raises(LocalProtocolError):
        RrdpParser("snapshot")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- (c)1-3: XML attacks

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<notification>&lol9;</notification>\n"
)


def test_c1_doctype_entity_bomb_is_refused_without_expansion() -> None:
    parser = RrdpParser()
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(BILLION_LAUGHS)
        parser.close()
    assert info.value.reason is Reason.XML_DOCTYPE
    assert info.value.context["line"] == 2


def test_c2_external_entity_is_refused_without_access() -> None:
    xxe = (
        b'<?xml version="1.0"?>\n<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + notification("&xxe;")
    )
    assert reason(xxe) is Reason.XML_DOCTYPE


def test_c2_entity_reference_without_declaration_is_refused() -> None:
    assert reason(snapshot(publish(text="&xxe;"))) is Reason.XML_ENTITY


def test_doctype_without_entities_is_refused() -> None:
    assert reason(b"<!DOCTYPE snapshot>" + snapshot("")) is Reason.XML_DOCTYPE


def test_c3_broken_markup_through_an_eight_byte_buffer() -> None:
    data = b"<!d[<>23456789"
    with pytest.raises(RemoteProtocolError) as info:
        feed_in_chunks(data, [8])
    assert info.value.reason is Reason.XML_MALFORMED


def test_processing_instruction_is_refused() -> None:
    data = b'<?xml version="1.0"?><?xml-stylesheet href="x"?>' + snapshot("")
    assert reason(data) is Reason.XML_PROCESSING_INSTRUCTION
    assert reason(snapshot("<?php x ?>")) is Reason.XML_PROCESSING_INSTRUCTION


def test_non_ascii_bytes_are_refused() -> None:
    data = snapshot("").replace(b"</snapshot>", "<!-- café -->".encode() + b"</snapshot>")
    err = refusal(data)
    assert err.reason is Reason.XML_NOT_ASCII
    assert err.context["offset"] == data.index(b"\xc3")


def test_utf16_byte_order_mark_is_refused() -> None:
    assert reason(b"\xff\xfe" + snapshot("")) is Reason.XML_NOT_ASCII


def test_malformed_xml_reports_position() -> None:
    err = refusal(snapshot(f"\n\n<publish uri='{URI}'></withdraw>"))
    assert err.reason is Reason.XML_MALFORMED
    assert err.context["line"] == 3 and isinstance(err.context["column"], int)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        snapshot(publish())[:-3],
        snapshot(publish())[:40],
        b"<snapshot",
    ],
)
def test_truncated_input_is_refused(data: bytes) -> None:
    assert reason(data) is Reason.RRDP_TRUNCATED


def test_junk_after_the_root_is_refused() -> None:
    assert reason(snapshot("") + b"<snapshot/>") is Reason.XML_MALFORMED
    assert reason(snapshot("") + b"x") is Reason.XML_MALFORMED


def test_unterminated_comment_after_the_root_is_refused() -> None:
    assert reason(snapshot("") + b"<!-- no end") is Reason.XML_MALFORMED


# --------------------------------------------------------------------------- (c)4: bombs


def test_c4_giant_serial_hits_a_limit_before_the_tag_ends() -> None:
    limits = relaxed(max_xml_markup_size=256 * 1024)
    parser = RrdpParser(limits=limits)
    parser.feed(f'<snapshot {NS} version="1" session_id="{SESSION}" serial="'.encode())
    fed = 0
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):  # up to 640 MiB offered
            parser.feed(b"1" * 65536)
            fed += 65536
    assert info.value.context["limit"] == "max_xml_markup_size"
    assert fed <= 256 * 1024 + 2 * 65536


def test_c4_giant_uri_hits_a_limit() -> None:
    parser = RrdpParser()
    parser.feed(snapshot("")[:-11] + b'<publish uri="rsync://h/m/')
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):
            parser.feed(b"a" * 65536)
    assert info.value.context["limit"] == "max_xml_markup_size"


def test_c4_giant_comment_hits_a_limit() -> None:
    parser = RrdpParser(limits=relaxed(max_xml_markup_size=100_000))
    parser.feed(b"<!-- ")
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):
            parser.feed(b"-> >" * 16384)  # '>' inside a comment does not end it
    assert info.value.context["limit"] == "max_xml_markup_size"


def test_c4_whitespace_before_the_root_hits_a_limit() -> None:
    parser = RrdpParser(limits=relaxed(max_xml_markup_size=100_000))
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):
            parser.feed(b" " * 65536)
    assert info.value.context["limit"] == "max_xml_markup_size"


def test_c4_whitespace_inside_publish_is_bounded_by_the_file_size() -> None:
    limits = relaxed(max_rrdp_file_size=4 * 1024 * 1024)
    parser = RrdpParser(limits=limits)
    parser.feed(snapshot("")[:-11] + b'<publish uri="rsync://h/m/a.cer">')
    fed = 0
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):
            parser.feed(b" \n" * 32768)
            fed += 65536
    assert info.value.reason is Reason.FILE_TOO_LARGE
    assert info.value.context["limit"] == "max_rrdp_file_size"
    assert fed <= 4 * 1024 * 1024


def test_attribute_longer_than_the_limit_is_refused() -> None:
    long_uri = "rsync://h/m/" + "a" * 5000
    err = refusal(snapshot(publish(uri=long_uri)))
    assert isinstance(err, LimitExceeded) and err.context["limit"] == "max_xml_attribute_length"


def test_uri_longer_than_the_uri_limit_is_refused() -> None:
    long_uri = "rsync://h/m/" + "a" * 2100
    assert reason(snapshot(publish(uri=long_uri))) is Reason.URI_TOO_LONG


# --------------------------------------------------------------------------- (c)6, (c)27: sizes


def test_c6_object_limit_fires_before_the_text_is_buffered() -> None:
    limits = relaxed(max_object_size=300_000)
    parser = RrdpParser(FileKind.SNAPSHOT, limits=limits)
    parser.feed(snapshot("")[:-11] + b'<publish uri="rsync://h/m/big.cer">')
    fed = 0
    with pytest.raises(LimitExceeded) as info:
        for _ in range(10_000):  # up to 640 MiB offered
            parser.feed(b"A" * 65536)
            fed += 65536
    assert info.value.reason is Reason.OBJECT_TOO_LARGE
    assert info.value.context["limit"] == "max_object_size"
    # 300,000 bytes are 400,000 base64 characters; at most one text buffer and one chunk more.
    assert fed <= 400_000 + 256 * 1024 + 2 * 65536


def test_c6_object_of_exactly_the_limit_is_fine_one_more_byte_is_not() -> None:
    for size in (1000, 1001, 1002):
        limits = relaxed(max_object_size=size)
        ok = snapshot(publish(text=base64.b64encode(bytes(size)).decode()))
        assert isinstance(parse(ok, limits=limits)[1], PublishElement)
        big = snapshot(publish(text=base64.b64encode(bytes(size + 1)).decode()))
        err = refusal(big, limits=limits)
        assert isinstance(err, LimitExceeded) and err.reason is Reason.OBJECT_TOO_LARGE


def test_c27_object_below_the_minimum_is_refused() -> None:
    small = snapshot(publish(text=base64.b64encode(bytes(99)).decode()))
    err = refusal(small)
    assert err.reason is Reason.RRDP_OBJECT_TOO_SMALL and err.context["size"] == 99
    assert isinstance(
        parse(snapshot(publish(text=base64.b64encode(bytes(100)).decode())))[1], PublishElement
    )


def test_c27_empty_publish_is_too_small() -> None:
    assert reason(snapshot(publish(text="\n   "))) is Reason.RRDP_OBJECT_TOO_SMALL


def test_file_size_limits_per_kind() -> None:
    note = notification(SNAP_REF)
    err = refusal(note, limits=relaxed(max_notification_size=len(note) - 1))
    assert err.reason is Reason.FILE_TOO_LARGE and err.context["limit"] == "max_notification_size"
    assert parse(note, limits=relaxed(max_notification_size=len(note)))
    snap = snapshot(publish())
    err = refusal(snap, limits=relaxed(max_rrdp_file_size=len(snap) - 1))
    assert err.context["limit"] == "max_rrdp_file_size"
    # A notification is held to its own, smaller cap even when the kind was not announced.
    big_note = notification(SNAP_REF + "\n" * 70_000)
    err = refusal(big_note, limits=relaxed(max_notification_size=65_000))
    assert err.context["limit"] == "max_notification_size"


def test_too_many_delta_references() -> None:
    deltas = "".join(delta_ref(s) for s in range(7, 2, -1))
    data = notification(SNAP_REF + deltas)
    err = refusal(data, limits=relaxed(max_deltas_listed=4))
    assert isinstance(err, LimitExceeded) and err.reason is Reason.TOO_MANY_DELTAS
    assert err.context["limit"] == "max_deltas_listed"
    assert parse(data, limits=relaxed(max_deltas_listed=5))


# --------------------------------------------------------------------------- (c)7: base64


@pytest.mark.parametrize(
    "text",
    [
        B64[:-1],  # not a multiple of four
        B64[:-4] + "QQ=",
        B64[:-4] + "Q!==",
        B64[:-4] + "Q-_A",  # URL-safe alphabet
        "=" + B64[1:],
        B64[:8] + "=" + B64[9:],
        B64 + "=",  # padding after a complete quantum
        B64 + "====",
        B64 + "&#xe9;",  # non-ASCII through a character reference
        B64[:20] + "&#xa0;" + B64[20:],  # a non-XML "whitespace" is not whitespace
    ],
)
def test_c7_malformed_base64_is_refused(text: str) -> None:
    assert reason(snapshot(publish(text=text))) is Reason.RRDP_BASE64


# --------------------------------------------------------------------------- (c)8: the root


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            f'xmlns="HTTP://www.ripe.net/rpki/rrdp" version="1" session_id="{SESSION}"',
            Reason.RRDP_NAMESPACE,
        ),
        (
            f'xmlns="http://www.example.com/rpki/rrdp" version="1" session_id="{SESSION}"',
            Reason.RRDP_NAMESPACE,
        ),
        (f'version="1" session_id="{SESSION}"', Reason.RRDP_NAMESPACE),
        (
            f'xmlns:r="http://www.ripe.net/rpki/rrdp" version="1" session_id="{SESSION}"',
            Reason.RRDP_NAMESPACE,
        ),
        (f'{NS} version="2" session_id="{SESSION}"', Reason.RRDP_VERSION),
        (f'{NS} version="01" session_id="{SESSION}"', Reason.RRDP_VERSION),
        (f'{NS} session_id="{SESSION}"', Reason.RRDP_MISSING_ATTRIBUTE),
        (f'{NS} version="1"', Reason.RRDP_MISSING_ATTRIBUTE),
        (f'{NS} version="1" session_id="not-a-uuid"', Reason.RRDP_SESSION_ID),
        (
            f'{NS} version="1" session_id="e9be21e7-c537-1564-b742-64700978c6b4"',
            Reason.RRDP_SESSION_ID,
        ),  # version 1 UUID
        (
            f'{NS} version="1" session_id="e9be21e7-c537-4564-7742-64700978c6b4"',
            Reason.RRDP_SESSION_ID,
        ),  # wrong variant
        (f'{NS} version="1" session_id="{SESSION}" extra="x"', Reason.RRDP_UNKNOWN_ATTRIBUTE),
    ],
)
def test_c8_bad_root_attributes(attrs: str, expected: Reason) -> None:
    assert reason(snapshot("", attrs=attrs)) is expected


@pytest.mark.parametrize(
    "serial",
    [
        "0",
        "-1",
        "+1",
        "",
        " 1",
        "1 ",
        "0x10",
        "1e3",
        "1.0",
        str(2**63),
        "9" * 30,
        "&#x661;",
    ],  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, RRDP says no
)
def test_c8_bad_serial(serial: str) -> None:
    assert reason(snapshot("", serial=serial)) is Reason.RRDP_SERIAL


def test_c8_largest_serial_is_fine() -> None:
    header = parse(snapshot("", serial=str(2**63 - 1)))[0]
    assert isinstance(header, RrdpFileHeader) and header.serial == 2**63 - 1


def test_root_element_must_be_an_rrdp_file() -> None:
    assert reason(b"<publish/>") is Reason.RRDP_ROOT_ELEMENT
    assert reason(f"<foo {NS}/>".encode()) is Reason.RRDP_ROOT_ELEMENT
    assert reason(snapshot(""), FileKind.DELTA) is Reason.RRDP_ROOT_ELEMENT
    assert reason(notification(SNAP_REF), FileKind.SNAPSHOT) is Reason.RRDP_ROOT_ELEMENT


# --------------------------------------------------------------------------- (c)9: structure


def test_c9_unknown_element_is_refused() -> None:
    assert reason(snapshot(publish() + '<foo uri="bar">QUJD</foo>')) is Reason.RRDP_UNKNOWN_ELEMENT
    assert reason(snapshot("<r:publish/>")) is Reason.RRDP_UNKNOWN_ELEMENT
    assert reason(snapshot(publish(text=f"{B64}<foo/>"))) is Reason.RRDP_UNKNOWN_ELEMENT


def test_c9_unknown_attribute_is_refused() -> None:
    assert reason(snapshot(publish(extra=' x="1"'))) is Reason.RRDP_UNKNOWN_ATTRIBUTE
    assert reason(delta(withdraw().replace("/>", ' size="3"/>'))) is Reason.RRDP_UNKNOWN_ATTRIBUTE
    assert reason(notification(SNAP_REF.replace("/>", ' x="1"/>'))) is (
        Reason.RRDP_UNKNOWN_ATTRIBUTE
    )
    prefixed = publish(extra=' xmlns:x="urn:x" x:y="1"')
    assert reason(snapshot(prefixed)) is Reason.RRDP_UNKNOWN_ATTRIBUTE


def test_c9_child_in_another_namespace_is_refused() -> None:
    assert reason(snapshot(publish(extra=' xmlns="urn:other"'))) is Reason.RRDP_NAMESPACE


def test_c9_duplicate_attribute_is_refused() -> None:
    assert reason(snapshot(publish(extra=f' uri="{URI}"'))) is Reason.XML_MALFORMED


def test_c9_nested_publish_is_refused() -> None:
    assert reason(snapshot(f'<publish uri="{URI}">{publish()}</publish>')) is Reason.RRDP_NESTING


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (snapshot(f"<snapshot {NS}/>"), Reason.RRDP_NESTING),
        (snapshot(SNAP_REF), Reason.RRDP_NESTING),
        (delta(delta_ref(7)), Reason.RRDP_NESTING),
        (delta(f"<notification {NS}/>"), Reason.RRDP_NESTING),
        (notification(SNAP_REF + publish()), Reason.RRDP_NESTING),
        (notification(SNAP_REF + withdraw()), Reason.RRDP_NESTING),
        (notification(SNAP_REF.replace("/>", f">{delta_ref(7)}</snapshot>")), Reason.RRDP_NESTING),
        (delta(f'<withdraw uri="{URI}" hash="{HASH}">{publish()}</withdraw>'), Reason.RRDP_NESTING),
    ],
)
def test_c9_element_in_the_wrong_place_is_refused(data: bytes, expected: Reason) -> None:
    assert reason(data) is expected


def test_c9_mismatched_closing_tag_is_refused() -> None:
    assert reason(snapshot(f'<publish uri="{URI}">{B64}</withdraw>')) is Reason.XML_MALFORMED


def test_text_outside_publish_is_refused() -> None:
    assert reason(snapshot("hello" + publish())) is Reason.RRDP_UNEXPECTED_TEXT
    assert reason(notification(SNAP_REF.replace("/>", ">x</snapshot>"))) is (
        Reason.RRDP_UNEXPECTED_TEXT
    )
    assert reason(snapshot("&#xa0;")) is Reason.RRDP_UNEXPECTED_TEXT  # not XML whitespace


def test_missing_child_attributes_are_refused() -> None:
    assert reason(snapshot(f"<publish>{B64}</publish>")) is Reason.RRDP_MISSING_ATTRIBUTE
    assert reason(delta(f'<withdraw hash="{HASH}"/>')) is Reason.RRDP_MISSING_ATTRIBUTE
    assert reason(notification(f'<snapshot uri="{SNAP_URI}"/>')) is Reason.RRDP_MISSING_ATTRIBUTE
    no_hash = delta_ref(7).replace(f' hash="{HASH}"', "")
    assert reason(notification(SNAP_REF + no_hash)) is Reason.RRDP_MISSING_ATTRIBUTE


@pytest.mark.parametrize("bad", ["ab" * 31, "ab" * 33, "zz" * 32, ""])
def test_hash_syntax(bad: str) -> None:
    assert reason(delta(withdraw(hash_=bad))) is Reason.RRDP_HASH_SYNTAX
    assert reason(notification(SNAP_REF.replace(HASH, bad))) is Reason.RRDP_HASH_SYNTAX


# --------------------------------------------------------------------------- (c)10: snapshots


def test_c10_notification_without_snapshot_is_refused() -> None:
    assert reason(notification("")) is Reason.RRDP_SNAPSHOT_COUNT


def test_c10_notification_with_two_snapshots_is_refused() -> None:
    assert reason(notification(SNAP_REF + SNAP_REF)) is Reason.RRDP_SNAPSHOT_COUNT


def test_delta_reference_before_the_snapshot_is_refused() -> None:
    assert reason(notification(delta_ref(7) + SNAP_REF)) is Reason.RRDP_ELEMENT_ORDER


def test_c12_duplicate_or_future_delta_serials_are_refused() -> None:
    assert reason(notification(SNAP_REF + delta_ref(6) + delta_ref(6))) is (
        Reason.RRDP_DUPLICATE_DELTA_SERIAL
    )
    assert reason(notification(SNAP_REF + delta_ref(8))) is (
        Reason.RRDP_DELTA_SERIAL_ABOVE_NOTIFICATION
    )
    assert reason(notification(SNAP_REF + delta_ref(7).replace('"7"', '"0"'))) is (
        Reason.RRDP_SERIAL
    )


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://rpki.example.net/repo/a.roa", Reason.URI_SCHEME),
        ("RSYNC://rpki.example.net/repo/a.roa", Reason.URI_SCHEME),
        ("rsync://rpki.example.net/repo/../a.roa", Reason.URI_DOT_SEGMENT),
        ("rsync://rpki.example.net/repo/./a.roa", Reason.URI_DOT_SEGMENT),
        ("rsync://rpki.example.net/repo//a.roa", Reason.URI_EMPTY_SEGMENT),
        ("rsync://../repo/a.roa", Reason.URI_DOT_SEGMENT),
        ("rsync://rpki.example.net/repo/.hidden", Reason.URI_HIDDEN_SEGMENT),
        ("rsync://rpki.example.net/repo/a\\b.roa", Reason.URI_BAD_CHARACTER),
        ("rsync://rpki.example.net/repo/a%20b/", Reason.URI_SYNTAX),  # a directory
        ("rsync://rpki.example.net/repo", Reason.URI_SYNTAX),  # a module, not an object
    ],
)
def test_object_uris_must_be_safe_rsync_uris(uri: str, expected: Reason) -> None:
    assert reason(snapshot(publish(uri=uri))) is expected
    assert reason(delta(withdraw(uri=uri))) is expected


def test_uri_with_ampersand_round_trips() -> None:
    event = parse(snapshot(publish(uri="rsync://h/m/a&amp;b.roa")))[1]
    assert isinstance(event, PublishElement) and event.uri.uri == "rsync://h/m/a&b.roa"


@pytest.mark.parametrize(
    "uri", ["http://rrdp.example.net/s.xml", "rsync://rrdp.example.net/s.xml", "https://h/../s"]
)
def test_notification_uris_must_be_https(uri: str) -> None:
    err = refusal(notification(SNAP_REF.replace(SNAP_URI, uri)))
    assert err.reason in (Reason.URI_SCHEME, Reason.URI_DOT_SEGMENT)
    bad_delta = delta_ref(7).replace("https://rrdp.example.net/d/7.xml", uri)
    assert refusal(notification(SNAP_REF + bad_delta)).reason is err.reason


# --------------------------------------------------------------------------- (c)21: identity


def test_c21_session_mismatch_is_refused() -> None:
    other = SessionId("666f76d3-6770-4bed-9262-e11d92455658")
    err = refusal(snapshot(publish()), FileKind.SNAPSHOT, expected_session=other)
    assert err.reason is Reason.RRDP_SESSION_MISMATCH


def test_c21_serial_mismatch_is_refused() -> None:
    err = refusal(delta(publish()), FileKind.DELTA, expected_serial=8)
    assert err.reason is Reason.RRDP_SERIAL_MISMATCH
    assert parse(delta(publish()), FileKind.DELTA, expected_serial=7)


# --------------------------------------------------------------------------- (c)24: duplicates

URI_B = URI.replace("a.roa", "b.roa")


@pytest.mark.parametrize(
    "data",
    [
        snapshot(publish() + publish()),
        snapshot(publish() + publish(uri=URI_B) + publish()),
        snapshot(publish() + publish(uri=URI.replace("rpki.example.net", "RPKI.Example.NET"))),
        delta(publish() + publish(extra=f' hash="{HASH}"')),
        delta(withdraw() + publish()),
        delta(publish(extra=f' hash="{HASH}"') + withdraw()),
        delta(withdraw() + withdraw()),
    ],
)
def test_c24_same_uri_twice_in_one_file_is_refused(data: bytes) -> None:
    assert reason(data) is Reason.RRDP_DUPLICATE_URI


def test_c24_module_and_path_are_case_sensitive() -> None:
    events = parse(snapshot(publish() + publish(uri=URI.replace("a.roa", "A.roa"))))
    assert len(events) == 4


def test_c24_duplicates_are_per_file() -> None:
    assert parse(snapshot(publish())) and parse(snapshot(publish()))


# --------------------------------------------------------------------------- (c)26


def test_c26_empty_delta_is_refused() -> None:
    assert reason(delta("")) is Reason.RRDP_EMPTY_DELTA
    assert reason(delta("\n  <!-- nothing -->\n")) is Reason.RRDP_EMPTY_DELTA


def test_c26_withdraw_with_content_is_refused() -> None:
    data = delta(f'<withdraw uri="{URI}" hash="{HASH}">{B64}</withdraw>')
    assert reason(data) is Reason.RRDP_WITHDRAW_WITH_CONTENT
    whitespace_only = delta(f'<withdraw uri="{URI}" hash="{HASH}">\n  </withdraw>')
    assert isinstance(parse(whitespace_only)[1], WithdrawElement)


def test_c26_publish_with_hash_in_snapshot_is_refused() -> None:
    data = snapshot(publish(extra=f' hash="{HASH}"'))
    assert reason(data) is Reason.RRDP_PUBLISH_HASH_IN_SNAPSHOT


def test_c26_withdraw_without_hash_is_refused() -> None:
    assert reason(delta(f'<withdraw uri="{URI}"/>')) is Reason.RRDP_WITHDRAW_WITHOUT_HASH


def test_withdraw_in_snapshot_is_refused() -> None:
    assert reason(snapshot(withdraw())) is Reason.RRDP_WITHDRAW_IN_SNAPSHOT


# --------------------------------------------------------------------------- chunking

CORPUS_SAMPLES = [
    "rrdp/krill-sync/rrdp-rev2658/notification.xml",
    "rrdp/krill-sync/rrdp-rev2658/e9be21e7-c537-4564-b742-64700978c6b4/2656/delta.xml",
    "rrdp/rpki-client-regress/snapshot.xml",
    "rrdp/rpki-client-regress/delta.xml",
    "rrdp/rpki-publication-server/valid-snapshot.xml",
    "rrdp/rrdp-tools/rrdp-content-aws/26291.xml",
    "rrdp/rpki-validator-3/repo1/snapshot.xml",
    "rrdp/fort/test-notification.xml",
]
REFUSED_SAMPLES = [
    "rrdp/rpki-client-regress/billion_lol.xml",
    "rrdp/rpki-monitoring/ripe-snapshot-collision.xml",
    "rrdp/rpki-publication-server/snapshot-with-invalid-tag.xml",
    "rrdp/rpki-validator-3/repo1/delta1.xml",
]


def _load(corpus: Path, rel: str) -> bytes:
    data = (corpus / rel).read_bytes()
    return gzip.decompress(data) if rel.endswith(".gz") else data


def _outcome(data: bytes, sizes: list[int]) -> list[RrdpEvent] | tuple[type, Reason]:
    try:
        return feed_in_chunks(data, sizes)
    except RpkiRepoError as exc:
        return (type(exc), exc.reason)


@pytest.mark.parametrize("rel", CORPUS_SAMPLES + REFUSED_SAMPLES)
def test_byte_at_a_time_equals_one_chunk(corpus_dir: Path, rel: str) -> None:
    data = _load(corpus_dir, rel)
    whole = _outcome(data, [])
    assert _outcome(data, [1]) == whole
    assert _outcome(data, [7, 1, 4096, 3]) == whole


@pytest.fixture(scope="module")
def samples(corpus_dir: Path) -> dict[str, bytes]:
    return {rel: _load(corpus_dir, rel) for rel in CORPUS_SAMPLES + REFUSED_SAMPLES}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_chunking_gives_identical_events(
    samples: dict[str, bytes], data: st.DataObject
) -> None:
    rel = data.draw(st.sampled_from(sorted(samples)))
    content = samples[rel]
    sizes = data.draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=20))
    assert _outcome(content, sizes) == _outcome(content, [])


# --------------------------------------------------------------------------- fuzzing


def _only_our_errors(content: bytes, sizes: list[int]) -> None:
    """h11's invariant: bad input raises an RpkiRepoError subclass, never anything else."""
    try:
        events = feed_in_chunks(content, sizes)
    except (RemoteProtocolError, LimitExceeded):
        return
    assert isinstance(events[-1], EndOfFile)
    assert events[-1].sha256 == Sha256.of(content)


@settings(max_examples=300, deadline=None)
@given(content=st.binary(max_size=2000), sizes=st.lists(st.integers(1, 300), min_size=1))
def test_fuzz_random_bytes(content: bytes, sizes: list[int]) -> None:
    _only_our_errors(content, sizes)


_XML_BITS = [
    b"<",
    b">",
    b"/",
    b"=",
    b'"',
    b"'",
    b"&",
    b";",
    b"<!--",
    b"-->",
    b"<![CDATA[",
    b"]]>",
    b"<?",
    b"?>",
    b"<!DOCTYPE x>",
    b"&#x61;",
    b"&amp;",
    b"\x00",
    b"\xff",
    b" ",
    b"\n",
    b"publish",
    b"withdraw",
    b"snapshot",
    b"delta",
    b"notification",
    b"hash",
    b"uri",
    b"serial",
    b"xmlns",
    b"9" * 25,
    b"==",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_corpus_files(samples: dict[str, bytes], data: st.DataObject) -> None:
    rel = data.draw(st.sampled_from(sorted(samples)))
    content = bytearray(samples[rel][:20_000] if rel.endswith("26291.xml") else samples[rel])
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = data.draw(st.integers(0, max(0, len(content) - 1)))
        if op == "flip" and content:
            content[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            content[pos:pos] = data.draw(st.sampled_from(_XML_BITS))
        elif op == "delete":
            del content[pos : pos + data.draw(st.integers(1, 50))]
        elif op == "truncate":
            del content[pos:]
        else:
            other = samples[data.draw(st.sampled_from(sorted(samples)))]
            start = data.draw(st.integers(0, max(0, len(other) - 1)))
            content[pos:pos] = other[start : start + data.draw(st.integers(1, 400))]
    sizes = data.draw(st.lists(st.integers(1, 5000), min_size=1, max_size=8))
    _only_our_errors(bytes(content), sizes)


# --------------------------------------------------------------------------- the digest set


def test_digest_set_is_exact_across_growth() -> None:
    rng = random.Random(8182)
    members = [rng.randbytes(8) for _ in range(140_000)]  # grows once, past 128 << 10
    digests = _DigestSet()
    assert all(digests.add(m) for m in members)
    assert len(digests) == len(members)
    assert not any(digests.add(m) for m in members[::997])
    assert digests.add(b"\xff" * 8) and not digests.add(b"\xff" * 8)


def test_digest_set_ignores_matches_across_two_members() -> None:
    digests = _DigestSet()
    first, second = b"ABCDABCD", b"ABCEFGHI"  # same bucket; together "ABCDABCDABCEFGHI"
    straddling = b"ABCDABCE"  # found at offset 4 of the bucket, but it is not a member
    assert digests.add(first) and digests.add(second)
    assert digests.add(straddling)
    assert not digests.add(straddling)
