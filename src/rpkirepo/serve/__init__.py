"""`rpkirepo serve`: an RRDP HTTP(S) server for what `rpkirepo publish` and `rpkirepo sync` write.

Layers (docs/architecture.md, "serve"):

* :mod:`._http` -- sans-I/O HTTP/1.1 request parsing with hard limits (:class:`HttpConnection`);
* :mod:`._view` -- the served set as values (:class:`View`, :class:`Entry`, :class:`Body`);
* :mod:`._respond` -- request + view -> :class:`Response` (conditional, gzip, ranges), pure;
* :mod:`._fast` -- the fast path: the answers of the two above, replayed for byte-identical
  request heads (:class:`~._fast.ResponseCache`);
* :mod:`._revision` -- loading a notification and its files, atomic switches, grace periods;
* :mod:`._server` -- the asyncio adapter (TLS, timeouts, limits, metrics, access log, workers);
* :mod:`.command` -- the command line.
"""

from rpkirepo.serve._http import (
    NEED_DATA,
    HttpConnection,
    NeedData,
    Request,
    normalise_path,
    status_of,
)
from rpkirepo.serve._respond import FileSlice, Response, error_response, respond
from rpkirepo.serve._revision import OpenFile, Revision, RevisionWatcher, load_revision
from rpkirepo.serve._server import ServeOptions, Server, run_server
from rpkirepo.serve._view import Body, Entry, FileHandle, FileKind, View, make_entry

__all__ = [
    "NEED_DATA",
    "Body",
    "Entry",
    "FileHandle",
    "FileKind",
    "FileSlice",
    "HttpConnection",
    "NeedData",
    "OpenFile",
    "Request",
    "Response",
    "Revision",
    "RevisionWatcher",
    "ServeOptions",
    "Server",
    "View",
    "error_response",
    "load_revision",
    "make_entry",
    "normalise_path",
    "respond",
    "run_server",
    "status_of",
]
