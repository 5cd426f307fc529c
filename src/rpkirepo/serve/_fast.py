"""The fast path of `rpkirepo serve`: replaying the reference path's answers to repeated heads.

Theory of operation
===================

RRDP traffic is repetitive: relying parties poll one notification with one of a handful of
request heads (their software's ``User-Agent``, the ``Host``, maybe the ``ETag`` or date they were
given last time), and a proxy or CDN in front sends the same head every time.  The reference path
(:class:`~rpkirepo.serve._http.HttpConnection` parsing, :func:`~rpkirepo.serve._respond.respond`
deciding) costs tens of microseconds of Python per request; an event loop in C can move a request
and a response in a few.

:class:`ResponseCache` memoises the reference path.  The adapter offers it a request head only
when the head arrived as one whole ``data_received`` chunk, containing exactly one head, on a
connection whose parser holds nothing (no buffered bytes, no queued request, keep-alive): from
that state the reference path's response is a function of the head's bytes, the
:class:`~rpkirepo.serve._view.View` and the current second (the ``Date`` field) alone.  So:

* on a miss, the adapter runs the reference path as always and then :meth:`ResponseCache.store`
  keeps the answer, split around its ``Date`` line, keyed by the exact bytes of the head;
* on a hit (:meth:`ResponseCache.get`), the adapter writes the stored answer with the current
  ``Date`` spliced in: one dictionary lookup and one ``transport.write``, no parsing at all.

Because every entry was produced by the reference path from the same bytes, the fast path cannot
answer differently from it (tests/test_serve_fast.py compares them byte for byte anyway).  What
is *not* stored, so always takes the reference path: refusals (they close the connection and are
counted by reason), requests for paths that cannot be served (counted as refusals), file bodies
(snapshots: ``sendfile``/``pread``), 429 answers of the rate limit, heads longer than
:data:`MAX_HEAD`, pipelined or fragmented input.  The cache belongs to one view: when the
revision switches or a grace period ends, the view is replaced and the cache emptied with it.
It holds at most :data:`MAX_ENTRIES` entries and is emptied when full, so a client inventing
heads costs what the reference path costs, and the cache's own memory stays bounded
(:data:`INLINE_BODY`).

Per-request side effects stay: the rate limit and the access log run on hits too, with the
:class:`~rpkirepo.serve._http.Request` the reference path parsed.  Request counters are counted
per entry (an integer increment) and folded into the metrics by :meth:`ResponseCache.fold`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from rpkirepo.serve._http import Request
from rpkirepo.serve._respond import Response, date_line
from rpkirepo.serve._view import View

__all__ = ["INLINE_BODY", "MAX_ENTRIES", "MAX_HEAD", "Cached", "ResponseCache"]

MAX_ENTRIES: Final = 256
"""Distinct request heads remembered per view."""

MAX_HEAD: Final = 2048
"""Longer request heads always take the reference path (and are never stored)."""

INLINE_BODY: Final = 16 * 1024
"""Bodies up to this size are stored joined to their head (one ``write`` per answer); larger ones
are the view's own bytes object, shared, written after the head.  So the cache holds at most
``MAX_ENTRIES * 2 * (MAX_HEAD + INLINE_BODY)`` bytes of its own (~9 MiB), whatever it serves."""

_CACHEABLE_STATUS: Final = frozenset({200, 304, 404})


class Cached:
    """One stored answer: the head before and after its ``Date`` line, the body, and what the
    adapter needs to finish the request as the reference path would (close, log, count)."""

    __slots__ = (
        "_post",
        "_pre",
        "_second",
        "_wire",
        "body",
        "close",
        "hits",
        "kind",
        "length",
        "request",
        "status",
    )

    def __init__(self, request: Request, response: Response) -> None:
        head = response.head
        start = head.index(b"\r\nDate: ") + 2
        end = head.index(b"\r\n", start) + 2
        body = response.body
        assert body is None or isinstance(body, bytes)
        inline = body is None or len(body) <= INLINE_BODY
        self._pre = head[:start]
        self._post = head[end:] + (body or b"") if inline else head[end:]
        self.body = None if inline else body
        """Written after :meth:`wire` when not ``None`` (a large body, not copied)."""
        self._second = -1
        self._wire = b""
        self.request = request
        self.status = response.status
        self.kind = response.kind
        self.length = response.length
        self.close = response.close
        self.hits = 0

    def wire(self, now: float) -> bytes:
        """The answer's head at ``now`` with its body unless :attr:`body` holds it (rebuilt
        once a second, when the ``Date`` changes)."""
        second = int(now)
        if second != self._second:
            self._wire = self._pre + date_line(now) + self._post
            self._second = second
        return self._wire


class ResponseCache:
    """Answers of the reference path by the exact bytes of the request head, for one view."""

    __slots__ = ("_entries", "view")

    def __init__(self) -> None:
        self._entries: dict[bytes, Cached] = {}
        self.view: View | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, head: bytes, view: View) -> Cached | None:
        """The stored answer to ``head`` under ``view``, or ``None``.

        The caller guarantees the head arrived whole, alone, on a connection at rest."""
        if view is not self.view:
            return None
        return self._entries.get(head)

    def store(
        self,
        head: bytes,
        request: Request,
        response: Response,
        view: View,
        fold: Callable[[str, int, int, int], None],
    ) -> Cached | None:
        """Remember the reference path's ``response`` to ``head`` (the whole input it parsed
        from a connection at rest), if it is of a kind that can be replayed."""
        if (
            len(head) > MAX_HEAD
            or request.path is None
            or response.status not in _CACHEABLE_STATUS
            or not (response.body is None or isinstance(response.body, bytes))
        ):
            return None
        if view is not self.view or len(self._entries) >= MAX_ENTRIES:
            self.fold(fold)
            self._entries.clear()
            self.view = view
        entry = Cached(request, response)
        self._entries[head] = entry
        return entry

    def fold(self, into: Callable[[str, int, int, int], None]) -> None:
        """Hand the hit counts since the last fold to ``into(kind, status, requests, bytes)``."""
        for entry in self._entries.values():
            n = entry.hits
            if n:
                entry.hits = 0
                into(entry.kind, entry.status, n, n * entry.length)
