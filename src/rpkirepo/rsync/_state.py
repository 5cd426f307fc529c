"""The daemon session's states and the only transitions allowed between them (data, not code).

::

    GREETING --greeting--> MODULE --module--> ARGS --args--> FILTERS --filters--> TRANSFER
        ARGS --negotiate--> NEGOTIATE --args--> FILTERS  (checksum and compressor names, >= 30)
        MODULE --list--> DONE                          (module listing: names, then EXIT)
        FILTERS --empty-list--> DONE                   (nothing to send, or path not found)
        TRANSFER --last-done--> GOODBYE --goodbye--> DONE                (protocol 27-30)
        GOODBYE --goodbye--> GOODBYE2 --goodbye--> DONE                  (protocol 31)
        any state --fail--> FAILED                     (an error was sent, or we just close)

Every session method that changes state goes through :func:`transition`; a pair missing from
the table is our own bug and raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from rpkirepo.errors import LocalProtocolError, Reason

__all__ = ["State", "transition"]


class State(Enum):
    GREETING = "greeting"
    MODULE = "module"
    ARGS = "args"
    NEGOTIATE = "negotiate"
    FILTERS = "filters"
    TRANSFER = "transfer"
    GOODBYE = "goodbye"
    GOODBYE2 = "goodbye2"
    DONE = "done"
    FAILED = "failed"


_TABLE: Final[dict[tuple[State, str], State]] = {
    (State.GREETING, "greeting"): State.MODULE,
    (State.MODULE, "module"): State.ARGS,
    (State.MODULE, "list"): State.DONE,
    (State.ARGS, "args"): State.FILTERS,
    (State.ARGS, "negotiate"): State.NEGOTIATE,
    (State.NEGOTIATE, "args"): State.FILTERS,
    (State.FILTERS, "filters"): State.TRANSFER,
    (State.FILTERS, "empty-list"): State.DONE,
    (State.TRANSFER, "last-done"): State.GOODBYE,
    (State.GOODBYE, "goodbye"): State.DONE,
    (State.GOODBYE, "goodbye-31"): State.GOODBYE2,
    (State.GOODBYE2, "goodbye"): State.DONE,
}
_TERMINAL: Final = frozenset({State.DONE, State.FAILED})


def transition(state: State, event: str) -> State:
    """The state after ``event`` in ``state``; ``fail`` leads to FAILED from anywhere but the
    terminal states."""
    if event == "fail" and state not in _TERMINAL:
        return State.FAILED
    try:
        return _TABLE[(state, event)]
    except KeyError:
        raise LocalProtocolError(
            Reason.RSYNC_SEQUENCE, "illegal session transition", state=state.value, event=event
        ) from None
