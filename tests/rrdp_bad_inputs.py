"""Bad RRDP notifications and bad encodings of them, shared by test_sync_hostile and
test_fetch_hostile: rrdp-checklist (c)1-3, 6, 8-10, 12, 16 and 28 in the notification, (c)4-5
in its HTTP encoding.

Every case is an edit of the good serial-2 notification a test module publishes, so that only
the intended defect is present.  A module reaches that notification (and its RRDP base URI)
through its own context ``C`` (a ``Published`` upstream, a fetch ``Bed``) with a
:class:`Notifications`; what differs between the two (the reason for a file on another origin,
the other-origin URIs themselves) is passed in.  Case ids are the catalogue entry they cover
(``c8-...`` is rrdp-checklist (c)8).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from hostile_http import HostileServer, Reply, gzip_stream
from rpkirepo.errors import Reason

C = TypeVar("C")

#: A bad notification for a context, given the server it will be served by.
Build: TypeAlias = Callable[[C, HostileServer], bytes]
#: A bad notification with its HTTP encoding.
Encode: TypeAlias = Callable[[C], Reply]

#: Nine levels of ten: 10**9 "lol" if a parser expanded entities.
LOL = (
    '<?xml version="1.0"?>\n<!DOCTYPE notification [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
        for i in range(1, 10)
    )
    + "]>\n"
)
SESSION_V1 = "7ebf5708-b43f-1f10-bede-6242ebde2224"  # a UUID, but version 1
SPACES = b" " * (1024 * 1024)
GZIP = (("Content-Encoding", "gzip"),)


def hash_pieces(pieces: list[bytes]) -> bytes:
    """The SHA-256 of a bomb's expanded text, without holding it."""
    h = hashlib.sha256()
    for p in pieces:
        h.update(p)
    return h.digest()


def snap_line(text: str) -> str:
    return next(line for line in text.splitlines() if "<snapshot " in line)


def delta_line(text: str) -> str:
    return next(line for line in text.splitlines() if "<delta " in line)


@dataclass(frozen=True)
class Notifications(Generic[C]):
    """The good serial-2 notification of a context (it lists a snapshot and delta 2), and
    builders of bad ones from it."""

    #: The good notification's text.
    text: Callable[[C], str]
    #: The RRDP base URI its snapshot and delta URIs start with.
    base: Callable[[C], str]

    def edit(self, old: str, new: str) -> Build[C]:
        def build(ctx: C, _srv: HostileServer) -> bytes:
            text = self.text(ctx)
            assert old in text, old  # else the case would test the good file
            return text.replace(old, new, 1).encode()

        return build

    def edit_base(self, old: str, new: str) -> Build[C]:
        """``edit`` where ``{B}`` stands for the RRDP base URI and ``{P}`` for the server's
        port (known only once the server runs)."""

        def build(ctx: C, srv: HostileServer) -> bytes:
            base = self.base(ctx)
            return self.edit(old.format(B=base), new.format(B=base, P=srv.port))(ctx, srv)

        return build

    def lines(self, change: Callable[[str, str, str], str]) -> Build[C]:
        """A notification rebuilt from its root start tag, snapshot line and delta line."""

        def build(ctx: C, _srv: HostileServer) -> bytes:
            text = self.text(ctx)
            root = text.splitlines()[0]
            return change(root, snap_line(text), delta_line(text)).encode()

        return build

    def with_session(self, value: str) -> Build[C]:
        def build(ctx: C, _srv: HostileServer) -> bytes:
            text, n = re.subn(r'session_id="[^"]*"', f'session_id="{value}"', self.text(ctx))
            assert n == 1
            return text.encode()

        return build

    def root_tag(self, ctx: C) -> bytes:
        return self.text(ctx).splitlines()[0].encode() + b"\n"

    def gz(self, ctx: C) -> bytes:
        return gzip.compress(self.text(ctx).encode(), mtime=0)


def bad_notifications(
    n: Notifications[C],
    outside_base: Reason,
    other_origins: Sequence[tuple[str, Build[C], Reason]],
) -> list[tuple[str, Build[C], Reason]]:
    """Every case is refused with its reason before anything else is fetched.

    ``outside_base`` is the reason for a snapshot on another host; ``other_origins`` are the
    module's own (c)16 cases, which depend on how its origin is reached."""
    edit, lines = n.edit, n.lines
    return [
        (
            "c1-doctype-entity-bomb",
            lambda ctx, _srv: (
                LOL + n.text(ctx).replace("</notification>", "&lol9;</notification>")
            ).encode(),
            Reason.XML_DOCTYPE,
        ),
        (
            "c2-external-entity-file",
            lines(
                lambda r, s, d: (
                    '<!DOCTYPE notification [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
                    + f"{r}\n{s}\n&x;\n{d}\n</notification>\n"
                )
            ),
            Reason.XML_DOCTYPE,
        ),
        (
            "c2-external-entity-network",
            lambda ctx, srv: (
                f'<!DOCTYPE notification [<!ENTITY x SYSTEM "{srv.url("/xxe")}">]>\n' + n.text(ctx)
            ).encode(),
            Reason.XML_DOCTYPE,
        ),
        (
            "c2-undeclared-entity-reference",
            edit("\n</notification>", "&x;\n</notification>"),
            Reason.XML_ENTITY,
        ),
        ("c3-short-markup-declaration", lambda _ctx, _srv: b"<!d[<>23456789", Reason.XML_MALFORMED),
        (
            "c6-processing-instruction",
            edit("\n</notification>", "<?evil x?>\n</notification>"),
            Reason.XML_PROCESSING_INSTRUCTION,
        ),
        (
            "c6-not-ascii",
            edit("</notification>", "<!-- \u00e9 -->\n</notification>"),
            Reason.XML_NOT_ASCII,
        ),
        ("c8-wrong-namespace", edit('rrdp"', 'rrdp/2"'), Reason.RRDP_NAMESPACE),
        (
            "c8-no-namespace",
            edit(' xmlns="http://www.ripe.net/rpki/rrdp"', ""),
            Reason.RRDP_NAMESPACE,
        ),
        ("c8-version-2", edit('version="1"', 'version="2"'), Reason.RRDP_VERSION),
        ("c8-session-not-uuid", n.with_session("not-a-uuid"), Reason.RRDP_SESSION_ID),
        ("c8-session-not-v4", n.with_session(SESSION_V1), Reason.RRDP_SESSION_ID),
        ("c8-serial-zero", edit('serial="2">', 'serial="0">'), Reason.RRDP_SERIAL),
        ("c8-serial-negative", edit('serial="2">', 'serial="-2">'), Reason.RRDP_SERIAL),
        ("c8-serial-2**63", edit('serial="2">', f'serial="{2**63}">'), Reason.RRDP_SERIAL),
        ("c8-serial-not-decimal", edit('serial="2">', 'serial="0x2">'), Reason.RRDP_SERIAL),
        ("c8-hash-not-hex", edit('hash="', 'hash="zz'), Reason.RRDP_HASH_SYNTAX),
        (
            "c9-unknown-element",
            edit("</notification>", "<extra/>\n</notification>"),
            Reason.RRDP_UNKNOWN_ELEMENT,
        ),
        (
            "c9-unknown-attribute",
            edit("<snapshot ", '<snapshot extra="1" '),
            Reason.RRDP_UNKNOWN_ATTRIBUTE,
        ),
        (
            "c9-duplicate-attribute",
            n.edit_base("<snapshot ", '<snapshot uri="{B}x.xml" '),
            Reason.XML_MALFORMED,
        ),
        (
            "c9-nested-element",
            lines(lambda r, s, d: f"{r}\n{s[:-2]}>\n{d}\n</snapshot>\n</notification>\n"),
            Reason.RRDP_NESTING,
        ),
        (
            "c9-mismatched-end-tag",
            edit("</notification>", "</notifications>"),
            Reason.XML_MALFORMED,
        ),
        (
            "c9-text-outside-elements",
            edit("</notification>", "surprise\n</notification>"),
            Reason.RRDP_UNEXPECTED_TEXT,
        ),
        ("c9-truncated", lambda ctx, _srv: n.text(ctx).encode()[:-20], Reason.RRDP_TRUNCATED),
        (
            "c10-no-snapshot",
            lines(lambda r, s, d: f"{r}\n</notification>\n"),
            Reason.RRDP_SNAPSHOT_COUNT,
        ),
        (
            "c10-two-snapshots",
            lines(lambda r, s, d: f"{r}\n{s}\n{s}\n{d}\n</notification>\n"),
            Reason.RRDP_SNAPSHOT_COUNT,
        ),
        (
            "c10-delta-before-snapshot",
            lines(lambda r, s, d: f"{r}\n{d}\n{s}\n</notification>\n"),
            Reason.RRDP_ELEMENT_ORDER,
        ),
        (
            "c12-duplicate-delta-serial",
            lines(lambda r, s, d: f"{r}\n{s}\n{d}\n{d}\n</notification>\n"),
            Reason.RRDP_DUPLICATE_DELTA_SERIAL,
        ),
        (
            "c12-delta-serial-above-notification",
            edit('<delta serial="2"', '<delta serial="3"'),
            Reason.RRDP_DELTA_SERIAL_ABOVE_NOTIFICATION,
        ),
        (
            "c16-snapshot-other-host",
            n.edit_base('<snapshot uri="{B}', '<snapshot uri="https://evil.example.net/rrdp/'),
            outside_base,
        ),
        *other_origins,
        (
            "c16-snapshot-plain-http",
            # The base itself with the scheme downgraded: nothing else is wrong.
            lambda ctx, srv: n.edit(
                f'<snapshot uri="{n.base(ctx)}',
                '<snapshot uri="http://' + n.base(ctx).removeprefix("https://"),
            )(ctx, srv),
            Reason.URI_SCHEME,
        ),
        (
            "c28-snapshot-dot-segment",
            n.edit_base('<snapshot uri="{B}', '<snapshot uri="{B}x/../'),
            Reason.URI_DOT_SEGMENT,
        ),
    ]


def bad_encodings(
    n: Notifications[C], other_codings: Sequence[tuple[str, Encode[C], Reason]] = ()
) -> list[tuple[str, Encode[C], Reason]]:
    """(c)4 bombs past a limit and (c)5 broken gzip or codings not asked for: refused in
    bounded time.  ``other_codings`` go before the unknown coding."""

    def bomb_past_notification_cap(ctx: C) -> Reply:
        # 17 MiB of whitespace inside the root: past max_notification_size (16 MiB).
        body = gzip_stream([n.root_tag(ctx), *([SPACES] * 17)])
        assert len(body) < 64 * 1024
        return Reply(body=body, headers=GZIP)

    def giant_serial(ctx: C) -> Reply:
        head = n.root_tag(ctx).split(b' serial="')[0] + b' serial="'
        body = gzip_stream([head, *([b"7" * (1024 * 1024)] * 4), b'">\n</notification>\n'])
        return Reply(body=body, headers=GZIP)

    def giant_snapshot_uri(ctx: C) -> Reply:
        # A complete element whose URI is 4 MiB long (the attribute-length limit must refuse it).
        hash_attr = f'" hash="{"0" * 64}"/>\n</notification>\n'.encode()
        body = gzip_stream(
            [
                n.root_tag(ctx),
                f'<snapshot uri="{n.base(ctx)}'.encode(),
                *([b"a" * (1024 * 1024)] * 4),
                hash_attr,
            ]
        )
        return Reply(body=body, headers=GZIP)

    def corrupt_crc(ctx: C) -> Reply:
        data = bytearray(n.gz(ctx))
        data[-8] ^= 0xFF  # the CRC-32 in the trailer
        return Reply(body=bytes(data), headers=GZIP)

    def corrupt_deflate(ctx: C) -> Reply:
        data = bytearray(n.gz(ctx))
        data[10:20] = b"\xff" * 10  # the first bytes of the deflate stream
        return Reply(body=bytes(data), headers=GZIP)

    def truncated(ctx: C) -> Reply:
        return Reply(body=n.gz(ctx)[:-12], headers=GZIP)

    def trailing_garbage(ctx: C) -> Reply:
        return Reply(body=n.gz(ctx) + b"GARBAGE AFTER THE GZIP MEMBER", headers=GZIP)

    def unknown_coding(ctx: C) -> Reply:
        return Reply(body=n.gz(ctx), headers=(("Content-Encoding", "br"),))

    coding = Reason.HTTP_CONTENT_ENCODING
    return [
        ("c4-gzip-bomb-past-notification-cap", bomb_past_notification_cap, Reason.FILE_TOO_LARGE),
        ("c4-gzip-giant-serial", giant_serial, Reason.LIMIT),
        ("c4-gzip-giant-snapshot-uri", giant_snapshot_uri, Reason.LIMIT),
        ("c5-gzip-bad-crc", corrupt_crc, coding),
        ("c5-gzip-corrupt-deflate", corrupt_deflate, coding),
        ("c5-gzip-truncated", truncated, coding),
        ("c5-gzip-trailing-bytes", trailing_garbage, coding),
        *other_codings,
        ("c5-unknown-content-coding", unknown_coding, coding),
    ]
