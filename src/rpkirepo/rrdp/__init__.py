"""RFC 8182 (RRDP), sans-I/O: model values, a streaming parser, a streaming writer, a planner.

Nothing here opens a file or a socket: the parser is fed bytes and yields typed events, the writer
returns bytes, the planner is a pure function.
"""

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
from rpkirepo.rrdp.parser import (
    NEED_DATA,
    EndOfFile,
    RrdpParser,
    iter_events,
    parse_notification,
)
from rpkirepo.rrdp.plan import LocalRrdpState, PlanAction, UpdatePlan, plan_update

__all__ = [
    "NEED_DATA",
    "DeltaRef",
    "EndOfFile",
    "FileKind",
    "LocalRrdpState",
    "NotificationFile",
    "PlanAction",
    "PublishElement",
    "RrdpFileHeader",
    "RrdpParser",
    "SessionId",
    "Sha256",
    "SnapshotRef",
    "UpdatePlan",
    "WithdrawElement",
    "iter_events",
    "parse_notification",
    "plan_update",
]
