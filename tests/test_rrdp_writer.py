"""Round trips: whatever rpkirepo.rrdp.writer produces, RrdpParser reads back to the same values."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from rpkirepo.rrdp.model import (
    DeltaRef,
    FileKind,
    NotificationFile,
    PublishElement,
    RrdpFileHeader,
    SessionId,
    Sha256,
    SnapshotRef,
    WithdrawElement,
)
from rpkirepo.rrdp.parser import EndOfFile, RrdpEvent, iter_events, parse_notification
from rpkirepo.rrdp.writer import (
    HashingSink,
    delta_start,
    end_tag,
    notification_bytes,
    publish_element,
    snapshot_start,
    withdraw_element,
)
from rpkirepo.uri import HttpsUri, RsyncUri

# RFC 3986 pchar as uri.py accepts it, '&' and friends included (the writer must escape '&').
_PCHAR = "abcXYZ019-_~!$&()*+,;=:@%."
_segment = st.text(_PCHAR, min_size=1, max_size=12).filter(lambda s: not s.startswith("."))
_host = st.sampled_from(["rpki.example.net", "h", "10.0.0.1", "a-b.example"])

sessions = st.uuids(version=4).flatmap(
    lambda u: st.sampled_from([SessionId(str(u)), SessionId(str(u).upper())])
)
serials = st.integers(1, 2**63 - 1)
hashes = st.binary(min_size=32, max_size=32).map(Sha256)
objects = st.binary(min_size=100, max_size=3000)


@st.composite
def rsync_uris(draw: st.DrawFn) -> RsyncUri:
    port = draw(st.sampled_from(["", ":873", ":10873"]))
    path = "/".join(draw(st.lists(_segment, min_size=2, max_size=4)))
    return RsyncUri(f"rsync://{draw(_host)}{port}/{path}")


@st.composite
def https_uris(draw: st.DrawFn) -> HttpsUri:
    path = "/".join(draw(st.lists(_segment, min_size=1, max_size=4)))
    return HttpsUri(f"https://{draw(_host)}/{path}")


unique_uris = st.lists(rsync_uris(), min_size=1, max_size=12, unique_by=lambda u: u.uri)


def parse(pieces: list[bytes], kind: FileKind) -> list[RrdpEvent]:
    sink = HashingSink(io.BytesIO())
    sink.write_all(pieces)
    events = list(iter_events(pieces, kind))
    eof = events[-1]
    assert isinstance(eof, EndOfFile)
    assert (eof.sha256, eof.size) == (sink.sha256, sink.size)
    return events


def test_uri_with_ampersand_round_trips() -> None:
    uri = RsyncUri("rsync://rpki.example.net/repo/a&b&amp;c.roa")
    session = SessionId("e9be21e7-c537-4564-b742-64700978c6b4")
    pieces = [
        snapshot_start(session, 3),
        publish_element(uri, b"x" * 200),
        end_tag(FileKind.SNAPSHOT),
    ]
    assert b"a&amp;b&amp;amp;c.roa" in pieces[1]
    event = parse(pieces, FileKind.SNAPSHOT)[1]
    assert isinstance(event, PublishElement) and event.uri == uri


@settings(max_examples=80, deadline=None)
@given(session=sessions, serial=serials, uris=unique_uris, data=st.data())
def test_snapshot_round_trip(
    session: SessionId, serial: int, uris: list[RsyncUri], data: st.DataObject
) -> None:
    elements = [PublishElement(u, data.draw(objects)) for u in uris]
    pieces = [snapshot_start(session, serial)]
    pieces += [publish_element(e.uri, e.data) for e in elements]
    pieces.append(end_tag(FileKind.SNAPSHOT))
    events = parse(pieces, FileKind.SNAPSHOT)
    assert events[0] == RrdpFileHeader(FileKind.SNAPSHOT, session, serial)
    assert events[1:-1] == elements
    assert isinstance(events[-1], EndOfFile) and events[-1].elements == len(elements)


@settings(max_examples=80, deadline=None)
@given(session=sessions, serial=serials, uris=unique_uris, data=st.data())
def test_delta_round_trip(
    session: SessionId, serial: int, uris: list[RsyncUri], data: st.DataObject
) -> None:
    elements: list[PublishElement | WithdrawElement] = []
    pieces = [delta_start(session, serial)]
    for uri in uris:
        choice = data.draw(st.sampled_from(["new", "replace", "withdraw"]))
        if choice == "withdraw":
            withdrawn = WithdrawElement(uri, data.draw(hashes))
            elements.append(withdrawn)
            pieces.append(withdraw_element(withdrawn.uri, withdrawn.hash))
        else:
            replaces = data.draw(hashes) if choice == "replace" else None
            published = PublishElement(uri, data.draw(objects), replaces)
            elements.append(published)
            pieces.append(publish_element(published.uri, published.data, published.hash))
    pieces.append(end_tag(FileKind.DELTA))
    events = parse(pieces, FileKind.DELTA)
    assert events[0] == RrdpFileHeader(FileKind.DELTA, session, serial)
    assert events[1:-1] == elements


@settings(max_examples=80, deadline=None)
@given(
    session=sessions,
    serial=st.integers(1, 2**63 - 1),
    snapshot=st.builds(SnapshotRef, https_uris(), hashes),
    data=st.data(),
)
def test_notification_round_trip(
    session: SessionId, serial: int, snapshot: SnapshotRef, data: st.DataObject
) -> None:
    listed = data.draw(st.sets(st.integers(max(1, serial - 500), serial), max_size=30))
    deltas = tuple(DeltaRef(s, data.draw(https_uris()), data.draw(hashes)) for s in listed)
    original = NotificationFile(session, serial, snapshot, deltas)
    parsed = parse_notification(notification_bytes(original))
    # The writer lists deltas newest first, as Krill does; everything else is kept as is.
    newest_first = tuple(sorted(deltas, key=lambda d: d.serial, reverse=True))
    assert parsed == NotificationFile(session, serial, snapshot, newest_first)
