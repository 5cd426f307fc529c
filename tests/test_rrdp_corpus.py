"""Every RRDP file of the shared corpus, parsed, with its expected outcome written down.

The table below lists every file under ``rrdp/``: either what it holds (kind, session, serial,
number of publish/withdraw elements or delta references) or the exact reason it is refused.  The
expected values were written by hand and are cross-checked against the corpus's own analysis
(DETAILS.tsv).  A file added to or removed from the corpus fails the test until the table says
what to expect of it.

Files refused only because rpki-rs emptied two ``<publish>`` elements in 2021 (objects below the
100-byte minimum, rrdp-checklist (c)27) also list what they hold, checked with that minimum
lifted, so the rest of their content is still verified.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpkirepo.errors import Reason, RemoteProtocolError, RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.rrdp.model import (
    FileKind,
    NotificationFile,
    RrdpFileHeader,
    SessionId,
    Sha256,
)
from rpkirepo.rrdp.parser import NEED_DATA, EndOfFile, RrdpEvent, RrdpParser, parse_notification
from rpkirepo.rrdp.plan import LocalRrdpState, PlanAction, plan_update

N, S, D = FileKind.NOTIFICATION, FileKind.SNAPSHOT, FileKind.DELTA
R = Reason
NO_MINIMUM = DEFAULT_LIMITS.override({"min_object_size": 0})


@dataclass(frozen=True)
class Ok:
    kind: FileKind
    session: str
    serial: int
    elements: int


@dataclass(frozen=True)
class Refused:
    reason: R
    without_minimum: Ok | None = None  # the outcome with min_object_size lifted


KRILL = "e9be21e7-c537-4564-b742-64700978c6b4"
KRILL_DIR = f"krill-sync/rrdp-rev2658/{KRILL}"
GOOD = "cd0c701d-ff09-4e95-8f2a-fa24de875fb5"
GOOD_DIR = f"krill-sync/validation/good/rrdp/{GOOD}/3/0ab6e84be3ec9561"
EMPTY = "bf64ea72-ebb8-462f-99fb-8cd06f418565"
RIPE = "a2d845c4-5b91-4015-a2b7-988c03ce232a"
PILOT = "b4772554-7369-4e0e-94f8-883d01bcabc8"
BANDITO = "9df4b597-af9e-4dca-bdda-719cce2c4e28"
AWS = "f62e1519-f2e4-4d57-80bc-56c3699ba88e"
RC_NOTIFY = "8fe05c2e-047d-49e7-8398-cd4250a572b1"

EXPECTED: dict[str, Ok | Refused] = {
    "fort/docs-sample-delta.xml": Ok(D, "66b09eea-03c7-435f-bb29-5bee810bd657", 18378, 2),
    "fort/test-notification.xml": Ok(N, "b912d0fc-14d3-4a51-bc6b-ceb9e7384222", 1510, 5),
    f"krill-sync/rrdp-empty-snapshot/{EMPTY}/1/snapshot.xml": Ok(S, EMPTY, 1, 0),
    "krill-sync/rrdp-empty-snapshot/notification.xml": Ok(N, EMPTY, 1, 0),
    f"{KRILL_DIR}/2653/delta.xml": Ok(D, KRILL, 2653, 2),
    f"{KRILL_DIR}/2654/delta.xml": Ok(D, KRILL, 2654, 2),
    f"{KRILL_DIR}/2655/delta.xml": Ok(D, KRILL, 2655, 2),
    f"{KRILL_DIR}/2656/delta.xml": Ok(D, KRILL, 2656, 11),
    f"{KRILL_DIR}/2657/rnd-d/delta.xml": Ok(D, KRILL, 2657, 3),
    f"{KRILL_DIR}/2657/rnd-sn/snapshot.xml": Ok(S, KRILL, 2657, 440),
    f"{KRILL_DIR}/2658/rnd-d/delta.xml": Ok(D, KRILL, 2658, 3),
    f"{KRILL_DIR}/2658/rnd-sn/snapshot.xml": Ok(S, KRILL, 2658, 441),
    "krill-sync/rrdp-rev2658/notification.xml": Ok(N, KRILL, 2658, 5),
    f"{GOOD_DIR}/delta.xml": Ok(D, GOOD, 3, 122),
    f"{GOOD_DIR}/snapshot.xml": Ok(S, GOOD, 3, 135),
    "krill-sync/validation/good/rrdp/notification.xml": Ok(N, GOOD, 3, 1),
    # (c)1 billion laughs: refused at the DOCTYPE, nothing expanded.
    "rpki-client-regress/billion_lol.xml": Refused(R.XML_DOCTYPE),
    "rpki-client-regress/delta.xml": Ok(D, "9b3f7e31-4979-4f8c-9818-73e4dadc3e6b", 13755, 4),
    "rpki-client-regress/notification.xml": Ok(N, RC_NOTIFY, 50550, 101),
    # (c)8 wrong xmlns (rpki-client 15b4d655).
    "rpki-client-regress/notification_xmlns.xml": Refused(R.RRDP_NAMESPACE),
    # Its publish elements repeat the RRDP xmlns: accepted, as rpki-client does.
    "rpki-client-regress/snapshot.xml": Ok(S, "7e7d2563-5bbb-40b0-8723-6a2e90c85d9e", 28483, 3),
    # (c)2 XXE: refused at the DOCTYPE, /etc/passwd never opened.
    "rpki-client-regress/xxe.xml": Refused(R.XML_DOCTYPE),
    "rpki-monitoring/pilot/notification.xml.gz": Ok(N, PILOT, 11486, 91),
    "rpki-monitoring/pilot/snapshot.xml.gz": Ok(S, PILOT, 11486, 1766),
    "rpki-monitoring/ripe-notification-1742-hash2.xml": Ok(N, RIPE, 1742, 0),
    "rpki-monitoring/ripe-notification-collision.xml": Ok(N, RIPE, 1742, 0),
    "rpki-monitoring/ripe-notification-serial-2.xml": Ok(N, RIPE, 1743, 0),
    "rpki-monitoring/ripe-notification-session-mismatch.xml": Ok(N, RIPE, 1742, 0),
    "rpki-monitoring/ripe-notification.xml": Ok(N, RIPE, 1742, 0),
    # The rpki-monitoring snapshots derive from rpki-rs's edited snapshot (two emptied publish).
    "rpki-monitoring/ripe-snapshot-1742-hash2.xml": Refused(
        R.RRDP_OBJECT_TOO_SMALL, Ok(S, RIPE, 1742, 276)
    ),
    # (c)24 the same URI twice in one snapshot.
    "rpki-monitoring/ripe-snapshot-collision.xml": Refused(R.RRDP_DUPLICATE_URI),
    # Well formed on its own; refused against its notification (see the hash test below).
    "rpki-monitoring/ripe-snapshot-session-mismatch.xml": Ok(
        S, "666f76d3-6770-4bed-9262-e11d92455658", 1742, 1
    ),
    "rpki-monitoring/ripe-snapshot.xml": Refused(R.RRDP_OBJECT_TOO_SMALL, Ok(S, RIPE, 1742, 277)),
    "rpki-prover-history/snapshot1.xml": Ok(S, "670de3e5-de83-4d77-bede-9d8a78454151", 1686, 1),
    # Snapshot and delta URIs are http://, not https://.
    "rpki-publication-server/notification-valid.xml": Refused(R.URI_SCHEME),
    # (c)9 an unknown <foo> element between two publish elements.
    "rpki-publication-server/snapshot-with-invalid-tag.xml": Refused(R.RRDP_UNKNOWN_ELEMENT),
    "rpki-publication-server/valid-snapshot.xml": Ok(S, BANDITO, 5932, 3),
    "rpki-rs-2019-original/ripe-delta.xml": Ok(D, RIPE, 1739, 66),
    "rpki-rs-2019-original/ripe-snapshot.xml": Ok(S, RIPE, 1742, 277),
    "rpki-rs/lolz-notification.xml": Refused(R.XML_DOCTYPE),
    "rpki-rs/ripe-delta.xml": Refused(R.RRDP_OBJECT_TOO_SMALL, Ok(D, RIPE, 1739, 66)),
    "rpki-rs/ripe-notification-unsorted.xml": Ok(N, RIPE, 1742, 91),
    "rpki-rs/ripe-notification-with-gaps.xml": Ok(N, RIPE, 1742, 90),
    "rpki-rs/ripe-notification.xml": Ok(N, RIPE, 1742, 91),
    "rpki-rs/ripe-snapshot.xml": Refused(R.RRDP_OBJECT_TOO_SMALL, Ok(S, RIPE, 1742, 277)),
    # (c)8 xmlns="HTTP://www.ripe.net/rpki/rrdp": the namespace is compared exactly.
    "rpki-validator-3/delta1.xml": Refused(R.RRDP_NAMESPACE),
    "rpki-validator-3/notification1.xml": Refused(R.RRDP_NAMESPACE),
    "rpki-validator-3/repo1/delta1.xml": Refused(R.RRDP_NAMESPACE),
    "rpki-validator-3/repo1/delta2.xml": Refused(R.RRDP_NAMESPACE),
    "rpki-validator-3/repo1/notification.xml": Refused(R.RRDP_NAMESPACE),
    "rpki-validator-3/repo1/snapshot.xml": Ok(S, BANDITO, 2, 1),
    "rpki-validator-3/snapshot1.xml": Ok(S, BANDITO, 1, 1),
    "rpki-validator-3/snapshot2.xml": Ok(S, "a4a2b27b-2fac-4b1f-a9e8-9e931449ba11", 3442, 3),
    **{
        f"rrdp-tools/rrdp-content-aws/{serial}.xml": Ok(D, AWS, serial, 2 + serial % 2)
        for serial in range(26290, 26299)
    },
    "rrdp-tools/rrdp-content-aws/notification.xml": Ok(N, AWS, 26298, 100),
    "rrdp-tools/sample-snapshot.xml": Ok(S, "1c33ba5d-4e16-448d-9a22-b12599ef1cba", 46832, 33),
}


def load(corpus: Path, rel: str) -> bytes:
    data = (corpus / "rrdp" / rel).read_bytes()
    return gzip.decompress(data) if rel.endswith(".gz") else data


def parse_all(data: bytes, **kw: object) -> list[RrdpEvent]:
    parser = RrdpParser(**kw)  # type: ignore[arg-type]
    events: list[RrdpEvent] = []
    for pos in range(0, len(data), 65536):
        parser.feed(data[pos : pos + 65536])
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    parser.close()
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def summary(events: list[RrdpEvent]) -> Ok:
    first, last = events[0], events[-1]
    assert isinstance(last, EndOfFile)
    assert isinstance(first, RrdpFileHeader | NotificationFile)
    return Ok(last.kind, first.session_id.value, first.serial, last.elements)


def corpus_files(corpus: Path) -> set[str]:
    root = corpus / "rrdp"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_table_lists_every_corpus_file(corpus_dir: Path) -> None:
    on_disk = corpus_files(corpus_dir)
    assert sorted(on_disk - EXPECTED.keys()) == [], "new corpus files: add them to EXPECTED"
    assert sorted(EXPECTED.keys() - on_disk) == [], "files gone from the corpus"


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_corpus_file(corpus_dir: Path, rel: str) -> None:
    data = load(corpus_dir, rel)
    expected = EXPECTED[rel]
    if isinstance(expected, Ok):
        events = parse_all(data)
        assert summary(events) == expected
        assert events[-1] == EndOfFile(expected.kind, Sha256.of(data), len(data), expected.elements)
        return
    with pytest.raises(RpkiRepoError) as info:
        parse_all(data)
    assert info.value.reason is expected.reason
    assert isinstance(info.value, RemoteProtocolError)
    if expected.without_minimum is not None:
        assert summary(parse_all(data, limits=NO_MINIMUM)) == expected.without_minimum


_SUMMARY = re.compile(
    r"session=(?P<session>\S+) serial=(?P<serial>\d+) version=1 "
    r"(?:publish=(?P<publish>\d+) withdraw=(?P<withdraw>\d+)"
    r"|snapshot_refs=1 delta_refs=(?P<refs>\d+))"
)
_TYPES = {"rrdp-notification": N, "rrdp-snapshot": S, "rrdp-delta": D}


def test_table_agrees_with_corpus_details(corpus_dir: Path) -> None:
    """The hand-written table against the corpus's independent analysis (DETAILS.tsv)."""
    with (corpus_dir / "DETAILS.tsv").open(newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f, delimiter="\t") if r["path"][:5] == "rrdp/"}
    checked = 0
    for rel, expected in EXPECTED.items():
        row = rows[f"rrdp/{rel}"]
        ok = expected if isinstance(expected, Ok) else expected.without_minimum
        m = _SUMMARY.search(row["summary"])
        if ok is None:
            continue
        assert m is not None, rel
        elements = int(m["refs"]) if m["refs"] else int(m["publish"]) + int(m["withdraw"])
        assert Ok(_TYPES[row["type"]], m["session"], int(m["serial"]), elements) == ok, rel
        checked += 1
    assert checked == sum(
        1 for e in EXPECTED.values() if isinstance(e, Ok) or e.without_minimum is not None
    )


# --------------------------------------------------------------------------- hashes


def _local_path(notification_dir: str, uri: str) -> str:
    """A Krill URI ``https://host/rrdp/<rest>`` to the corpus file ``<dir>/<rest>``."""
    return f"{notification_dir}/{uri.split('/rrdp/', 1)[1]}"


@pytest.mark.parametrize(
    ("notification_rel", "files_dir"),
    [
        ("krill-sync/rrdp-rev2658/notification.xml", "krill-sync/rrdp-rev2658"),
        ("krill-sync/validation/good/rrdp/notification.xml", "krill-sync/validation/good/rrdp"),
        ("krill-sync/rrdp-empty-snapshot/notification.xml", "krill-sync/rrdp-empty-snapshot"),
    ],
)
def test_krill_notification_hashes_match_the_files(
    corpus_dir: Path, notification_rel: str, files_dir: str
) -> None:
    note = parse_notification(load(corpus_dir, notification_rel))
    refs = [(S, note.serial, note.snapshot.uri.uri, note.snapshot.hash)]
    refs += [(D, d.serial, d.uri.uri, d.hash) for d in note.deltas]
    for kind, serial, uri, digest in refs:
        data = load(corpus_dir, _local_path(files_dir, uri))
        events = parse_all(
            data, expect=kind, expected_session=note.session_id, expected_serial=serial
        )
        eof = events[-1]
        assert isinstance(eof, EndOfFile) and eof.sha256 == digest, uri


def _hash_after_parse(data: bytes, **kw: object) -> tuple[Sha256, R | None]:
    parser = RrdpParser(**kw)  # type: ignore[arg-type]
    try:
        parser.feed(data)
        parser.close()
    except RpkiRepoError as exc:
        return parser.sha256, exc.reason
    return parser.sha256, None


@pytest.mark.parametrize(
    ("notification_rel", "snapshot_rel", "outcome"),
    [
        ("ripe-notification.xml", "ripe-snapshot.xml", None),
        ("ripe-notification-1742-hash2.xml", "ripe-snapshot-1742-hash2.xml", None),
        # The hash matches, yet the content is refused: the parser checks more than the hash.
        ("ripe-notification-collision.xml", "ripe-snapshot-collision.xml", R.RRDP_DUPLICATE_URI),
        (
            "ripe-notification-session-mismatch.xml",
            "ripe-snapshot-session-mismatch.xml",
            R.RRDP_SESSION_MISMATCH,
        ),
        ("ripe-notification-serial-2.xml", "ripe-snapshot.xml", R.RRDP_SERIAL_MISMATCH),
    ],
)
def test_rpki_monitoring_snapshot_hashes(
    corpus_dir: Path, notification_rel: str, snapshot_rel: str, outcome: R | None
) -> None:
    note = parse_notification(load(corpus_dir, f"rpki-monitoring/{notification_rel}"))
    data = load(corpus_dir, f"rpki-monitoring/{snapshot_rel}")
    digest, reason = _hash_after_parse(
        data,
        expect=S,
        limits=NO_MINIMUM,  # these snapshots carry the two emptied publish elements
        expected_session=note.session_id,
        expected_serial=note.serial,
    )
    assert digest == note.snapshot.hash
    assert reason is outcome


def test_aws_delta_hashes_match_without_the_added_newline(corpus_dir: Path) -> None:
    note = parse_notification(load(corpus_dir, "rrdp-tools/rrdp-content-aws/notification.xml"))
    refs = {d.serial: d for d in note.deltas}
    for serial in range(26290, 26299):
        stored = load(corpus_dir, f"rrdp-tools/rrdp-content-aws/{serial}.xml")
        assert stored.endswith(b"\n")
        served = stored[:-1]
        events = parse_all(
            served, expect=D, expected_session=note.session_id, expected_serial=serial
        )
        assert isinstance(events[-1], EndOfFile)
        assert events[-1].sha256 == refs[serial].hash
        assert Sha256.of(stored) != refs[serial].hash


def test_rpki_rs_2019_delta_is_the_one_ripe_served(corpus_dir: Path) -> None:
    note = parse_notification(load(corpus_dir, "rpki-rs/ripe-notification.xml"))
    ref = next(d for d in note.deltas if d.serial == 1739)
    events = parse_all(
        load(corpus_dir, "rpki-rs-2019-original/ripe-delta.xml"),
        expect=D,
        expected_session=note.session_id,
        expected_serial=1739,
    )
    assert isinstance(events[-1], EndOfFile) and events[-1].sha256 == ref.hash


# --------------------------------------------------------------------------- the planner


def _note(corpus: Path, rel: str) -> NotificationFile:
    return parse_notification(load(corpus, rel))


def test_plan_gaps_notification(corpus_dir: Path) -> None:
    note = _note(corpus_dir, "rpki-rs/ripe-notification-with-gaps.xml")  # 1737 is missing
    ripe = SessionId(RIPE)
    gap = plan_update(LocalRrdpState(ripe, 1730), note)
    assert (gap.action, gap.reason) == (PlanAction.SNAPSHOT, R.PLAN_DELTA_GAP)
    after_gap = plan_update(LocalRrdpState(ripe, 1737), note)
    assert after_gap.action is PlanAction.DELTAS
    assert [d.serial for d in after_gap.deltas] == [1738, 1739, 1740, 1741, 1742]


def test_plan_unsorted_notification(corpus_dir: Path) -> None:
    note = _note(corpus_dir, "rpki-rs/ripe-notification-unsorted.xml")
    plan = plan_update(LocalRrdpState(SessionId(RIPE), 1651), note)
    assert plan.action is PlanAction.DELTAS
    assert [d.serial for d in plan.deltas] == list(range(1652, 1743))
    by_serial = {d.serial: d for d in note.deltas}
    assert all(by_serial[d.serial] is d for d in plan.deltas)


def test_plan_real_notifications(corpus_dir: Path) -> None:
    ripe = _note(corpus_dir, "rpki-rs/ripe-notification.xml")
    local = LocalRrdpState(SessionId(RIPE), 1651)
    assert len(plan_update(local, ripe).deltas) == 91
    small = DEFAULT_LIMITS.override({"max_delta_steps": 50})
    assert plan_update(local, ripe, limits=small).reason is R.PLAN_TOO_MANY_DELTAS
    assert plan_update(LocalRrdpState(SessionId(RIPE), 1650), ripe).reason is R.PLAN_DELTA_GAP
    assert plan_update(LocalRrdpState(SessionId(RIPE), 1742), ripe).reason is R.PLAN_UP_TO_DATE
    assert plan_update(LocalRrdpState(SessionId(KRILL), 1700), ripe).reason is R.PLAN_NEW_SESSION

    krill = _note(corpus_dir, "krill-sync/rrdp-rev2658/notification.xml")
    hashes = {d.serial: d.hash for d in krill.deltas}
    local = LocalRrdpState(SessionId(KRILL), 2655, hashes)
    plan = plan_update(local, krill)
    assert [d.serial for d in plan.deltas] == [2656, 2657, 2658]
    mutated = {**hashes, 2655: Sha256(bytes(32))}
    desync = plan_update(LocalRrdpState(SessionId(KRILL), 2655, mutated), krill)
    assert desync.reason is R.PLAN_DELTA_HASH_CHANGED

    serial2 = _note(corpus_dir, "rpki-monitoring/ripe-notification-serial-2.xml")
    assert plan_update(LocalRrdpState(SessionId(RIPE), 1742), serial2).reason is R.PLAN_NO_DELTAS

    empty = _note(corpus_dir, "krill-sync/rrdp-empty-snapshot/notification.xml")
    assert plan_update(None, empty).reason is R.PLAN_NO_LOCAL_STATE
    assert plan_update(LocalRrdpState(SessionId(EMPTY), 1), empty).reason is R.PLAN_UP_TO_DATE


def test_plan_aws_deltas_match_the_delta_files(corpus_dir: Path) -> None:
    note = _note(corpus_dir, "rrdp-tools/rrdp-content-aws/notification.xml")
    plan = plan_update(LocalRrdpState(SessionId(AWS), 26289), note)
    assert [d.serial for d in plan.deltas] == list(range(26290, 26299))
    for ref in plan.deltas:
        served = load(corpus_dir, f"rrdp-tools/rrdp-content-aws/{ref.serial}.xml")[:-1]
        eof = parse_all(served, expected_session=note.session_id, expected_serial=ref.serial)[-1]
        assert isinstance(eof, EndOfFile) and eof.sha256 == ref.hash
