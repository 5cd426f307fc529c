"""RRDP update planning: what to fetch next, given what we hold and a fresh notification.

A pure function, no I/O: :func:`plan_update` takes the local state of one repository (its
session, its serial and the delta hashes seen so far) and a parsed notification file, and returns
an :class:`UpdatePlan`: take the snapshot, apply a contiguous run of deltas, or do nothing.  Every
plan carries a stable :class:`~rpkirepo.errors.Reason` (the ``PLAN_*`` members), so each fallback
to a snapshot can be logged and counted (style guide: observable decisions).

The rules, in the order they are applied (rrdp-checklist (b)9-13, (c)11-15):

1. no local state: snapshot (``no-local-state``);
2. the session changed: snapshot (``new-session``; RFC 8182 §3.4.1 MUST);
3. the local serial is 0, i.e. nothing was ever applied: snapshot (``local-serial-zero``);
4. a listed delta whose serial we have seen now has a different hash: the server lost its
   history, so snapshot (``delta-hash-changed``; RFC 9697);
5. the notification serial went backwards: never apply deltas, snapshot (``serial-regression``;
   8182 is silent, the publication-server BCP and Routinator take the snapshot);
6. same serial: nothing to do (``up-to-date``);
7. no deltas listed: snapshot (``no-deltas``);
8. the highest listed delta is not the notification serial (a hole at the end):
   snapshot (``last-delta-not-notification-serial``; rpki-client restored this check);
9. more than ``Limits.max_delta_steps`` deltas needed: snapshot (``too-many-deltas``);
10. any serial from local+1 to the notification serial missing: snapshot (``delta-gap``);
11. otherwise apply exactly those deltas, ascending (``deltas``).  The listed order does not
    matter (Routinator sorts too).

Duplicate delta serials and delta serials above the notification serial never reach the planner:
:class:`~rpkirepo.rrdp.model.NotificationFile` refuses them on construction (rrdp-checklist (c)12).

Non-goals: fetching, hash checks of the fetched files (the caller compares
``EndOfFile.sha256`` with the ``DeltaRef.hash``), and falling back to the snapshot when applying a
delta fails (rrdp-checklist (b)20; the caller plans that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType
from typing import Final

from rpkirepo.errors import LocalProtocolError, Reason
from rpkirepo.limits import DEFAULT_LIMITS, Limits
from rpkirepo.rrdp.model import MAX_SERIAL, DeltaRef, NotificationFile, SessionId, Sha256

__all__ = ["LocalRrdpState", "PlanAction", "UpdatePlan", "plan_update"]


class PlanAction(StrEnum):
    """What the caller should fetch next."""

    SNAPSHOT = "snapshot"
    DELTAS = "deltas"
    UP_TO_DATE = "up-to-date"


_SNAPSHOT_REASONS: Final = frozenset(
    {
        Reason.PLAN_NO_LOCAL_STATE,
        Reason.PLAN_NEW_SESSION,
        Reason.PLAN_LOCAL_SERIAL_ZERO,
        Reason.PLAN_DELTA_HASH_CHANGED,
        Reason.PLAN_SERIAL_REGRESSION,
        Reason.PLAN_NO_DELTAS,
        Reason.PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL,
        Reason.PLAN_TOO_MANY_DELTAS,
        Reason.PLAN_DELTA_GAP,
        Reason.PLAN_DUPLICATE_DELTA_SERIAL,
        Reason.PLAN_DELTA_SERIAL_ABOVE_NOTIFICATION,
    }
)


@dataclass(frozen=True, slots=True)
class LocalRrdpState:
    """What we hold for one repository (one notification URI).

    ``serial`` 0 means a session is known but nothing was applied yet.  ``delta_hashes`` maps the
    serials of deltas seen in earlier notifications to their hashes, for RFC 9697 desync
    detection; it is copied into a read-only mapping on construction.
    """

    session_id: SessionId
    serial: int
    delta_hashes: Mapping[int, Sha256] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, SessionId):
            raise LocalProtocolError(Reason.USAGE, "session_id must be a SessionId")
        serial = self.serial
        if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= MAX_SERIAL:
            raise LocalProtocolError(
                Reason.STATE_CORRUPT, "local serial out of range", serial=str(serial)
            )
        hashes = dict(self.delta_hashes)
        for s, h in hashes.items():
            if isinstance(s, bool) or not isinstance(s, int) or not isinstance(h, Sha256):
                raise LocalProtocolError(
                    Reason.STATE_CORRUPT, "delta_hashes maps int serials to Sha256 values"
                )
        object.__setattr__(self, "delta_hashes", MappingProxyType(hashes))


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """The decision: ``action``, the ``reason`` for it, and for DELTAS the deltas in order."""

    action: PlanAction
    reason: Reason
    deltas: tuple[DeltaRef, ...] = ()

    def __post_init__(self) -> None:
        action, reason, deltas = self.action, self.reason, self.deltas
        consistent = (
            (action is PlanAction.DELTAS and reason is Reason.PLAN_DELTAS and len(deltas) > 0)
            or (action is PlanAction.UP_TO_DATE and reason is Reason.PLAN_UP_TO_DATE)
            or (action is PlanAction.SNAPSHOT and reason in _SNAPSHOT_REASONS)
        )
        if not consistent or (action is not PlanAction.DELTAS and deltas):
            raise LocalProtocolError(
                Reason.USAGE,
                "inconsistent update plan",
                action=str(action),
                plan_reason=str(reason),
            )
        for prev, cur in pairwise(deltas):
            if cur.serial != prev.serial + 1:
                raise LocalProtocolError(Reason.USAGE, "plan deltas must be contiguous")

    @property
    def needs_snapshot(self) -> bool:
        return self.action is PlanAction.SNAPSHOT


def _snapshot(reason: Reason) -> UpdatePlan:
    return UpdatePlan(PlanAction.SNAPSHOT, reason)


def plan_update(
    local: LocalRrdpState | None,
    notification: NotificationFile,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> UpdatePlan:
    """Decide how to bring ``local`` up to ``notification`` (rules in the module docstring)."""
    if local is None:
        # rrdp-checklist (b)9.
        return _snapshot(Reason.PLAN_NO_LOCAL_STATE)
    if not local.session_id.same_session(notification.session_id):
        # RFC 8182 §3.4.1: a new session_id means the snapshot, whatever the serials say;
        # rrdp-checklist (c)15 (same serial, new session).
        return _snapshot(Reason.PLAN_NEW_SESSION)
    if local.serial == 0:
        return _snapshot(Reason.PLAN_LOCAL_SERIAL_ZERO)
    known = local.delta_hashes
    for delta in notification.deltas:
        seen = known.get(delta.serial)
        if seen is not None and seen != delta.hash:
            # RFC 9697: a (session, serial) delta never changes; if it did, the server's history
            # was rewritten (rrdp-checklist (b)11, (c)14).
            return _snapshot(Reason.PLAN_DELTA_HASH_CHANGED)
    target = notification.serial
    if target < local.serial:
        # rrdp-checklist (b)13, (c)15: never apply deltas across a regression.
        return _snapshot(Reason.PLAN_SERIAL_REGRESSION)
    if target == local.serial:
        return UpdatePlan(PlanAction.UP_TO_DATE, Reason.PLAN_UP_TO_DATE)
    if not notification.deltas:
        return _snapshot(Reason.PLAN_NO_DELTAS)
    by_serial = {d.serial: d for d in notification.deltas}
    if max(by_serial) != target:
        # rrdp-checklist (b)10, (c)11: a hole at the end of the list.
        return _snapshot(Reason.PLAN_LAST_DELTA_NOT_NOTIFICATION_SERIAL)
    if target - local.serial > limits.max_delta_steps:
        # rrdp-checklist (b)12, (c)13.  Checked before the range is walked.
        return _snapshot(Reason.PLAN_TOO_MANY_DELTAS)
    steps: list[DeltaRef] = []
    for serial in range(local.serial + 1, target + 1):
        step = by_serial.get(serial)
        if step is None:
            # rrdp-checklist (b)10, (c)11.
            return _snapshot(Reason.PLAN_DELTA_GAP)
        steps.append(step)
    return UpdatePlan(PlanAction.DELTAS, Reason.PLAN_DELTAS, tuple(steps))
