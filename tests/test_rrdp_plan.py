"""plan_update: one test per rule of rrdp-checklist (b)9-13 / (c)11-15, then properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpkirepo.errors import LocalProtocolError, Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.rrdp.model import DeltaRef, NotificationFile, SessionId, Sha256, SnapshotRef
from rpkirepo.rrdp.plan import LocalRrdpState, PlanAction, UpdatePlan, plan_update
from rpkirepo.uri import HttpsUri

SESSION = SessionId("e9be21e7-c537-4564-b742-64700978c6b4")
OTHER = SessionId("666f76d3-6770-4bed-9262-e11d92455658")
SNAPSHOT = SnapshotRef(HttpsUri("https://rrdp.example.net/s.xml"), Sha256(bytes(32)))


def h(n: int) -> Sha256:
    return Sha256(n.to_bytes(32, "big"))


def ref(serial: int, hash_: Sha256 | None = None) -> DeltaRef:
    uri = HttpsUri(f"https://rrdp.example.net/{serial}/delta.xml")
    return DeltaRef(serial, uri, hash_ if hash_ is not None else h(serial))


def note(
    serial: int, deltas: list[int] | None = None, session: SessionId = SESSION
) -> NotificationFile:
    return NotificationFile(session, serial, SNAPSHOT, tuple(ref(s) for s in deltas or []))


def local(serial: int, hashes: dict[int, Sha256] | None = None) -> LocalRrdpState:
    return LocalRrdpState(SESSION, serial, hashes or {})


def reason(plan: UpdatePlan) -> Reason:
    return plan.reason


# --------------------------------------------------------------------------- one rule each


def test_b9_no_local_state_takes_the_snapshot() -> None:
    plan = plan_update(None, note(5, [5]))
    assert plan == UpdatePlan(PlanAction.SNAPSHOT, Reason.PLAN_NO_LOCAL_STATE)
    assert plan.needs_snapshot and plan.deltas == ()


def test_b9_new_session_takes_the_snapshot() -> None:
    assert plan_update(local(4), note(5, [5], OTHER)).reason is Reason.PLAN_NEW_SESSION


def test_c15_same_serial_new_session_takes_the_snapshot() -> None:
    assert plan_update(local(5), note(5, [5], OTHER)).reason is Reason.PLAN_NEW_SESSION


def test_session_ids_compare_case_insensitively() -> None:
    upper = SessionId(SESSION.value.upper())
    assert plan_update(local(4), note(5, [5], upper)).action is PlanAction.DELTAS


def test_b9_local_serial_zero_takes_the_snapshot() -> None:
    assert plan_update(local(0), note(1, [1])).reason is Reason.PLAN_LOCAL_SERIAL_ZERO


def test_b11_changed_delta_hash_takes_the_snapshot() -> None:
    plan = plan_update(local(4, {3: h(999)}), note(5, [3, 4, 5]))
    assert plan.reason is Reason.PLAN_DELTA_HASH_CHANGED


def test_b11_changed_hash_wins_over_up_to_date() -> None:
    assert plan_update(local(5, {5: h(999)}), note(5, [5])).reason is (
        Reason.PLAN_DELTA_HASH_CHANGED
    )


def test_b11_unchanged_or_unlisted_known_hashes_are_fine() -> None:
    plan = plan_update(local(4, {4: h(4), 1: h(12345)}), note(5, [4, 5]))
    assert plan.action is PlanAction.DELTAS and [d.serial for d in plan.deltas] == [5]


@pytest.mark.parametrize("target", [1, 3, 4])
def test_b13_serial_regression_takes_the_snapshot(target: int) -> None:
    assert plan_update(local(5), note(target, [target])).reason is Reason.PLAN_SERIAL_REGRESSION


def test_same_serial_is_up_to_date() -> None:
    plan = plan_update(local(5), note(5, [4, 5]))
    assert plan == UpdatePlan(PlanAction.UP_TO_DATE, Reason.PLAN_UP_TO_DATE)


def test_same_serial_without_deltas_is_up_to_date() -> None:
    assert plan_update(local(5), note(5)).action is PlanAction.UP_TO_DATE


def test_no_deltas_listed_takes_the_snapshot() -> None:
    assert plan_update(local(4), note(5)).reason is Reason.PLAN_NO_DELTAS


def test_c11_hole_at_the_end_takes_the_snapshot() -> None:
    plan = plan_update(local(5), note(9, [6, 7, 8]))
    assert plan.reason is Reason.PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL


def test_c11_gap_in_the_middle_takes_the_snapshot() -> None:
    assert plan_update(local(5), note(9, [6, 7, 9])).reason is Reason.PLAN_DELTA_GAP


def test_c11_gap_at_the_start_takes_the_snapshot() -> None:
    assert plan_update(local(5), note(9, [7, 8, 9])).reason is Reason.PLAN_DELTA_GAP


def test_c13_too_many_deltas_takes_the_snapshot() -> None:
    limits = DEFAULT_LIMITS.override({"max_delta_steps": 3})
    assert plan_update(local(5), note(9, [6, 7, 8, 9]), limits=limits).reason is (
        Reason.PLAN_TOO_MANY_DELTAS
    )
    exactly = plan_update(local(6), note(9, [6, 7, 8, 9]), limits=limits)
    assert [d.serial for d in exactly.deltas] == [7, 8, 9]


def test_default_step_cap_is_300() -> None:
    assert plan_update(local(1), note(302, list(range(2, 303)))).reason is (
        Reason.PLAN_TOO_MANY_DELTAS
    )
    assert len(plan_update(local(2), note(302, list(range(2, 303)))).deltas) == 300


def test_huge_distance_is_refused_without_walking_it() -> None:
    far = 2**62
    assert plan_update(local(1), note(far, [far])).reason is Reason.PLAN_TOO_MANY_DELTAS


def test_b10_unsorted_lists_are_fine_and_plans_are_ascending() -> None:
    plan = plan_update(local(5), note(9, [8, 6, 9, 7, 3]))
    assert plan.action is PlanAction.DELTAS and plan.reason is Reason.PLAN_DELTAS
    assert [d.serial for d in plan.deltas] == [6, 7, 8, 9]


def test_older_deltas_are_ignored() -> None:
    plan = plan_update(local(7), note(10, list(range(1, 11))))
    assert [d.serial for d in plan.deltas] == [8, 9, 10]


def test_c12_duplicate_and_future_serials_never_reach_the_planner() -> None:
    with pytest.raises(RemoteProtocolError):
        note(9, [8, 8, 9])
    with pytest.raises(RemoteProtocolError):
        note(9, [9, 10])


# --------------------------------------------------------------------------- the values


def test_local_state_validates_and_copies() -> None:
    hashes = {3: h(3)}
    state = LocalRrdpState(SESSION, 3, hashes)
    hashes[3] = h(4)
    assert state.delta_hashes[3] == h(3)
    with pytest.raises(TypeError):
        state.delta_hashes[3] = h(5)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.serial = 4  # type: ignore[misc]
    assert hash(state) == hash(LocalRrdpState(SESSION, 3, {3: h(9)}))
    for bad in (-1, 2**63, True):
        with pytest.raises(LocalProtocolError):
            LocalRrdpState(SESSION, bad)
    with pytest.raises(LocalProtocolError):
        LocalRrdpState(SESSION, 1, {"1": h(1)})  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        LocalRrdpState(SESSION, 1, {1: "ab" * 32})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("action", "why", "deltas"),
    [
        (PlanAction.DELTAS, Reason.PLAN_DELTAS, ()),
        (PlanAction.DELTAS, Reason.PLAN_DELTA_GAP, (ref(1),)),
        (PlanAction.DELTAS, Reason.PLAN_DELTAS, (ref(1), ref(3))),
        (PlanAction.SNAPSHOT, Reason.PLAN_UP_TO_DATE, ()),
        (PlanAction.SNAPSHOT, Reason.PLAN_NEW_SESSION, (ref(1),)),
        (PlanAction.UP_TO_DATE, Reason.PLAN_DELTAS, ()),
        (PlanAction.SNAPSHOT, Reason.HASH_MISMATCH, ()),
    ],
)
def test_inconsistent_plans_cannot_be_built(
    action: PlanAction, why: Reason, deltas: tuple[DeltaRef, ...]
) -> None:
    with pytest.raises(LocalProtocolError):
        UpdatePlan(action, why, deltas)


# --------------------------------------------------------------------------- properties


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[LocalRrdpState, NotificationFile, int]:
    target = draw(st.integers(1, 400))
    listed = draw(st.sets(st.integers(1, target), max_size=80))
    if draw(st.booleans()):  # often a complete tail, so DELTAS plans are common
        listed |= set(range(max(1, target - draw(st.integers(0, 60))), target + 1))
    order = draw(st.permutations(sorted(listed)))
    hash_of = {s: h(s + draw(st.sampled_from([0, 0, 0, 0, 1000]))) for s in order}
    deltas = tuple(ref(s, hash_of[s]) for s in order)
    session = draw(st.sampled_from([SESSION, SESSION, SESSION, OTHER]))
    notification = NotificationFile(session, target, SNAPSHOT, deltas)
    behind = st.integers(0, 70).map(lambda k: max(0, target - k))
    local_serial = draw(st.one_of(st.integers(0, 450), behind, behind))
    known = draw(st.sets(st.integers(1, 450), max_size=10))
    state = LocalRrdpState(SESSION, local_serial, {s: h(s) for s in known})
    if draw(st.integers(0, 3)) == 0:
        # A scenario built to be usable, before the noise above had its say.
        start = max(1, target - draw(st.integers(1, 60)))
        tail = tuple(ref(s) for s in range(start, target + 1))
        notification = NotificationFile(SESSION, target, SNAPSHOT, tail)
        state = LocalRrdpState(SESSION, start - 1 if start > 1 else 1, state.delta_hashes)
        return state, notification, draw(st.integers(60, 120))
    return state, notification, draw(st.integers(1, 120))


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_deltas_plan_is_exactly_the_contiguous_run(
    scenario: tuple[LocalRrdpState, NotificationFile, int],
) -> None:
    state, notification, max_steps = scenario
    limits = DEFAULT_LIMITS.override({"max_delta_steps": max_steps})
    plan = plan_update(state, notification, limits=limits)
    listed = {d.serial: d for d in notification.deltas}
    changed = any(
        s in listed and listed[s].hash != digest for s, digest in state.delta_hashes.items()
    )
    wanted = range(state.serial + 1, notification.serial + 1)
    usable = (
        notification.session_id == state.session_id
        and state.serial > 0
        and not changed
        and notification.serial > state.serial
        and len(wanted) <= max_steps
        and all(s in listed for s in wanted)
    )
    assert (plan.action is PlanAction.DELTAS) == usable
    if plan.action is PlanAction.DELTAS:
        assert [d.serial for d in plan.deltas] == list(wanted)
        assert all(listed[d.serial] is d for d in plan.deltas)
        assert plan.reason is Reason.PLAN_DELTAS
    elif plan.action is PlanAction.UP_TO_DATE:
        assert notification.serial == state.serial and plan.deltas == ()
    else:
        assert plan.deltas == () and plan.reason.value != Reason.PLAN_DELTAS.value
    # The order of the list never matters.
    reordered = dataclasses.replace(notification, deltas=tuple(reversed(notification.deltas)))
    assert plan_update(state, reordered, limits=limits) == plan
