"""The server arguments an rsync client sends to a daemon, parsed against an allow-list.

A daemon client sends the argument vector its own ``server_options()`` builds (rsync options.c):
``--server --sender -<letters>e<client info> [--long-options] . <module>/<path>``.  We accept what
the relying parties' rsync invocations produce (rsync-wire §6: rpki-client, Routinator, FORT,
rcynic, openrsync, and ``--list-only``), act on the few options that change what we send, and
refuse everything else with a message the client prints, as rsyncd does for refused options.

Non-goals: receiving (``--sender`` is required: "module is read only"), secluded args (``-s``),
``--files-from``, ``--iconv``, ACLs/xattrs/hard links/relative paths (``-A -X -H -R``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from rpkirepo.errors import Reason, RemoteProtocolError

__all__ = ["ServerArgs", "parse_server_args"]

#: Letters acted on.
_ACT: Final = frozenset("rdogcz")
#: Letters accepted and ignored: they only change what the receiving client does.
_IGNORE: Final = frozenset("tOJlLpDvqnWxSubIEKk")
#: Long options accepted and ignored (exact, or ``name=`` with a value checked by kind).
_IGNORED_FLAGS: Final = frozenset(
    {
        "--partial", "--inplace", "--safe-links", "--copy-unsafe-links", "--ignore-errors",
        "--size-only", "--stats", "--list-only", "--no-r", "--no-recursive", "--msgs2stderr",
        "--no-msgs2stderr", "--specials", "--no-specials", "--delete", "--delete-before",
        "--delete-during", "--delete-delay", "--delete-after", "--delete-excluded",
        "--del", "--force", "--ignore-existing", "--existing", "--update", "--omit-dir-times",
        "--no-motd", "--numeric-ids", "--new-compress", "--old-compress",
    }
)  # fmt: skip
_NUMERIC: Final = frozenset(
    {"--max-delete", "--bwlimit", "--modify-window", "--max-alloc", "--compress-threads"}
)
_SIZES: Final = frozenset({"--max-size", "--min-size"})
_TEXT: Final = frozenset({"--log-format", "--out-format", "--info", "--debug"})
_SIZE_RE: Final = re.compile(r"\d+(\.\d+)?([KMGTPkmgtp][bB]?|[bB])?([+-]1)?")
_WORDS_RE: Final = re.compile(r"[A-Za-z0-9%_.,:'\- ]*")
_MAX_NUMBER_TEXT: Final = 20
_MAX_COMPRESS_THREADS: Final = 16


@dataclass(frozen=True, slots=True)
class ServerArgs:
    """What the client asked for, as far as the sender is concerned."""

    recursive: bool = False
    dirs: bool = False
    uid: bool = False
    gid: bool = False
    checksum: bool = False
    compress: bool = False
    compress_level: int = 6
    numeric_ids: bool = False
    checksum_seed: int = 0
    timeout: int = 0
    client_info: str = ""
    path: bytes = b""
    #: what the client chose itself (``--checksum-choice``, ``--compress-choice`` and its
    #: aliases); only what it left empty is negotiated (compat.c ``negotiate_the_strings``)
    checksum_choice: str = ""
    compress_choice: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.compress_level <= 9:
            raise ValueError("compress_level out of range")

    @property
    def open_checksum(self) -> bool:
        """The checksum is left to negotiation (no ``--checksum-choice``)."""
        return not self.checksum_choice

    @property
    def open_compressor(self) -> bool:
        """The client compresses and leaves the compressor to negotiation."""
        return self.compress and not self.compress_choice


def _refuse(
    detail: str, arg: str = "", reason: Reason = Reason.RSYNC_ARGUMENT
) -> RemoteProtocolError:
    return RemoteProtocolError(reason, detail, arg=arg[:80] if arg else None)


def _number(name: str, value: str, lo: int, hi: int) -> int:
    if not value or len(value) > _MAX_NUMBER_TEXT or not value.isdigit():
        raise _refuse(f"{name}: a number is required", name)
    n = int(value)
    if not lo <= n <= hi:
        raise _refuse(f"{name}={value}: out of range", name)
    return n


def parse_server_args(raw: Sequence[bytes], protocol: int) -> ServerArgs:
    """Parse the argument vector; raise :class:`RemoteProtocolError` with the text the client
    should see (``rsync: <detail>``) for anything not allowed."""
    try:
        args = [a.decode("ascii") for a in raw]
    except UnicodeDecodeError:
        raise _refuse("non-ASCII server argument") from None
    if not args or args[0] != "--server":
        raise _refuse("the first argument must be --server", args[0] if args else "")
    if "--sender" not in args:
        raise _refuse("ERROR: module is read only", reason=Reason.RSYNC_READ_ONLY)
    try:
        dot = args.index(".", 1)
    except ValueError:
        raise _refuse("missing '.' argument") from None
    opts = args[1:dot]
    paths = args[dot + 1 :]
    flags: dict[str, object] = {}
    seen_sender = False
    for arg in opts:
        if arg == "--sender":
            if seen_sender:
                raise _refuse("repeated --sender", arg)
            seen_sender = True
        elif arg.startswith("--"):
            _long_option(arg, protocol, flags)
        elif arg.startswith("-") and len(arg) > 1:
            _short_cluster(arg, flags)
        else:
            raise _refuse(f"unexpected argument {arg!r}", arg)
    if not seen_sender:
        raise _refuse("ERROR: module is read only", reason=Reason.RSYNC_READ_ONLY)
    if len(paths) != 1:
        raise _refuse("exactly one path is supported", reason=Reason.RSYNC_PATH)
    path = paths[0].encode("ascii")
    return ServerArgs(
        recursive=bool(flags.get("r")),
        dirs=bool(flags.get("d")),
        uid=bool(flags.get("o")),
        gid=bool(flags.get("g")),
        checksum=bool(flags.get("c")),
        compress=bool(flags.get("z")),
        compress_level=int(flags.get("compress_level", 6)),  # type: ignore[call-overload]
        numeric_ids=bool(flags.get("numeric_ids")),
        checksum_seed=int(flags.get("checksum_seed", 0)),  # type: ignore[call-overload]
        timeout=int(flags.get("timeout", 0)),  # type: ignore[call-overload]
        client_info=str(flags.get("client_info", "")),
        path=path,
        checksum_choice=str(flags.get("checksum_choice", "")),
        compress_choice=str(flags.get("compress_choice", "")),
    )


def _short_cluster(arg: str, flags: dict[str, object]) -> None:
    body = arg[1:]
    if body.startswith("B") and body[1:].isdigit() and len(body) <= _MAX_NUMBER_TEXT:
        return  # -B<block size>: we never use the receiver's blocks
    if body.startswith("@") and len(body) <= _MAX_NUMBER_TEXT:
        tail = body[1:].removeprefix("-")
        if tail.isdigit():
            return  # -@N (--modify-window)
    for i, letter in enumerate(body):
        if letter == "e":
            info = body[i + 1 :]
            if len(info) > 64 or not re.fullmatch(r"[A-Za-z0-9.]*", info):
                raise _refuse("bad client info after -e", arg)
            flags["client_info"] = info
            return
        if letter in _ACT:
            flags[letter] = True
        elif letter not in _IGNORE:
            raise _refuse(f"-{letter}: option not supported by this server", arg)


def _long_option(arg: str, protocol: int, flags: dict[str, object]) -> None:
    name, eq, value = arg.partition("=")
    if not eq and arg in _IGNORED_FLAGS:
        if arg == "--numeric-ids":
            flags["numeric_ids"] = True
        elif arg in ("--new-compress", "--old-compress"):
            flags["z"] = True  # = --compress with zlibx / zlib: the same stream for us
            flags["compress_choice"] = "zlibx" if arg == "--new-compress" else "zlib"
        return
    if not eq:
        raise _refuse(f"{arg}: option not supported by this server", arg)
    if name == "--timeout":
        flags["timeout"] = _number(name, value, 0, 1 << 30)
    elif name == "--compress-level":
        # rsync >= 3.2 sends it without -z for "compress, choice negotiated" (options.c
        # CPRES_AUTO); level 0 then means literal tokens (token.c init_compression_level).
        flags["compress_level"] = _number(name, value, 0, 9)
        flags["z"] = True
    elif name == "--checksum-seed":
        flags["checksum_seed"] = _number(name, value, 0, 0x7FFFFFFF)
    elif name == "--checksum-choice":
        if value not in ("md5", "xxh128") or protocol < 30:
            raise _refuse(f"{arg}: only md5 and xxh128 are supported (protocol >= 30)", arg)
        flags["checksum_choice"] = value
    elif name == "--compress-choice":
        if value not in ("zlib", "zlibx"):
            raise _refuse(f"{arg}: only zlib and zlibx are supported", arg)
        flags["z"] = True  # a client that names a compressor compresses
        flags["compress_choice"] = value
    elif name in _SIZES:
        if len(value) > _MAX_NUMBER_TEXT or not _SIZE_RE.fullmatch(value):
            raise _refuse(f"{name}: a size is required", name)
    elif name == "--compress-threads":
        _number(name, value, 0, _MAX_COMPRESS_THREADS)
    elif name in _NUMERIC:
        _number(name, value.removeprefix("-"), 0, 1 << 62)
    elif name in _TEXT:
        if len(value) > 256 or not _WORDS_RE.fullmatch(value):
            raise _refuse(f"{name}: unsupported value", name)
    else:
        raise _refuse(f"{name}: option not supported by this server", name)
