"""A read-only, sender-only rsync daemon serving RPKI revision trees from memory.

The protocol core is sans-I/O (``_wire``, ``_args``, ``_filters``, ``_model``, ``_state``,
``_session``, ``_md4``): bytes in, events and bytes out, no files or sockets.  ``tree`` loads a
revision from disk, ``daemon`` is the asyncio adapter, ``command`` the CLI glue.  See
docs/architecture.md ("The rsync daemon") for the design.
"""

from __future__ import annotations

from rpkirepo.rsync._args import ServerArgs, parse_server_args
from rpkirepo.rsync._filters import FilterRule, FilterSet, parse_rule
from rpkirepo.rsync._model import Entry, FileList, FlistOptions, Revision, RevisionBuilder
from rpkirepo.rsync._receiver import (
    NEED_DATA,
    FileListReceived,
    FileReceived,
    ListEntry,
    Receiver,
    ServerMessage,
    SessionDone,
)
from rpkirepo.rsync._session import (
    SERVER_PROTOCOL,
    ClientMessage,
    Event,
    FileSent,
    ModuleListed,
    Session,
    SessionEnded,
    TransferStarted,
)
from rpkirepo.rsync._state import State

__all__ = [
    "NEED_DATA",
    "SERVER_PROTOCOL",
    "ClientMessage",
    "Entry",
    "Event",
    "FileList",
    "FileListReceived",
    "FileReceived",
    "FileSent",
    "FilterRule",
    "FilterSet",
    "FlistOptions",
    "ListEntry",
    "ModuleListed",
    "Receiver",
    "Revision",
    "RevisionBuilder",
    "ServerArgs",
    "ServerMessage",
    "Session",
    "SessionDone",
    "SessionEnded",
    "State",
    "TransferStarted",
    "parse_rule",
    "parse_server_args",
]
