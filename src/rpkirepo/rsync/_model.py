"""The in-memory model of one served revision, and the file lists made from it.

A :class:`Revision` is built once per revision of a module (``DIR/current``) by the I/O layer,
which walks the tree and hands every directory and file to a :class:`RevisionBuilder`; the
builder validates each name (rsync-wire §8 "output safety": relative, no ``.``/``..`` parts, no
empty parts, no NUL/control characters/backslash, component <= 255 bytes, path <= 1023 bytes) so
no client can ever be sent a name that leads outside its destination directory.  After
:meth:`RevisionBuilder.build` the revision is immutable except for caches of values derived
deterministically from it (encoded file lists, MD4 sums, deflated token streams), so any number
of sessions share it, and a session keeps the revision it started with until it ends.

File lists (rsync flist.c ``send_file_entry`` for the layout; facts from rsync-wire §4): protocol
27 and 30-31 encodings, never incremental recursion, never hard links or nanoseconds.  The order
is the receiver's sort order, so a request index is a position in our list.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, StorageError
from rpkirepo.rsync._filters import FilterSet
from rpkirepo.rsync._md4 import md4
from rpkirepo.rsync._wire import int32, longint, varint, varlong

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "Entry",
    "FileList",
    "FlistOptions",
    "ListedEntry",
    "Revision",
    "RevisionBuilder",
    "deflate_tokens",
    "validate_name",
]

DIR_MODE: Final = 0o040755
FILE_MODE: Final = 0o100644
DIR_SIZE: Final = 4096
MAX_COMPONENT: Final = 255  # NAME_MAX
MAX_PATH: Final = 1023  # BSD PATH_MAX - 1: the strictest receiver's limit

# flist.c transmit flags (rsync.h XMIT_*).
XMIT_TOP_DIR: Final = 0x01
XMIT_SAME_MODE: Final = 0x02
XMIT_EXTENDED_FLAGS: Final = 0x04
XMIT_SAME_UID: Final = 0x08
XMIT_SAME_GID: Final = 0x10
XMIT_SAME_NAME: Final = 0x20
XMIT_LONG_NAME: Final = 0x40
XMIT_SAME_TIME: Final = 0x80
XMIT_NO_CONTENT_DIR: Final = 0x0100

LITERAL_CHUNK: Final = 32768  # rsync's CHUNK_SIZE: longest literal run in one token
DEFLATE_PIECE: Final = 16383
DEFAULT_COMPRESS_LEVEL: Final = 6  # zlib's and rsync's default  # MAX_DATA_COUNT of token.c
DEFLATED_DATA: Final = 0x40
END_FLAG: Final = 0x00


def validate_name(path: bytes) -> None:
    """Raise :class:`StorageError` (``rsync-bad-name``) unless ``path`` is safe to send."""
    if len(path) > MAX_PATH:
        raise StorageError(Reason.RSYNC_BAD_NAME, "path too long", path=path[:80].hex())
    if path.startswith(b"/") or path.endswith(b"/"):
        raise StorageError(Reason.RSYNC_BAD_NAME, "not a relative name", path=repr(path))
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise StorageError(Reason.RSYNC_BAD_NAME, "empty or dot component", path=repr(path))
        if len(part) > MAX_COMPONENT:
            raise StorageError(Reason.RSYNC_BAD_NAME, "component too long", path=repr(path))
        if any(c < 0x20 or c == 0x7F or c == 0x5C for c in part):
            raise StorageError(
                Reason.RSYNC_BAD_NAME, "control character or backslash", path=repr(path)
            )


@dataclass(frozen=True, slots=True)
class Entry:
    """A directory or regular file of a revision; ``path`` is relative to the module root
    (``b""`` is the root itself)."""

    path: bytes
    is_dir: bool
    size: int
    mtime: int
    md5: bytes = b""


@dataclass(frozen=True, slots=True)
class FlistOptions:
    """Everything a file list's bytes depend on: the cache key of an encoded list."""

    protocol: int
    scope: bytes  # the path after the module name, as the client sent it
    recursive: bool
    dirs: bool
    uid: bool
    gid: bool
    checksum: bool
    filters: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ListedEntry:
    """One entry of a session's file list: the name sent and the entry it stands for."""

    name: bytes
    entry: Entry
    top_dir: bool = False
    content_dir: bool = True


@dataclass(frozen=True, slots=True)
class FileList:
    """A file list ready to send: entries in index order and their encoding (including the
    end marker and, at protocol 27, nothing else: id lists and io_error follow separately)."""

    entries: tuple[ListedEntry, ...]
    encoded: bytes
    missing: bool = False  # the requested path does not exist (rsync exit 23)


class RevisionBuilder:
    """Collects a revision's entries, validating names; see the module docstring."""

    def __init__(self, name: str, *, max_entries: int, seed: int) -> None:
        self.name = name
        self.max_entries = max_entries
        self.seed = seed & 0x7FFFFFFF
        self._entries: dict[bytes, Entry] = {b"": Entry(b"", True, DIR_SIZE, 0)}
        self._children: dict[bytes, list[bytes]] = {b"": []}
        self._bodies: dict[bytes, bytes] = {}

    def _parent(self, path: bytes) -> bytes:
        parent = path.rpartition(b"/")[0]
        if parent not in self._children:
            raise StorageError(Reason.RSYNC_BAD_NAME, "parent not added first", path=repr(path))
        return parent

    def _check(self, path: bytes) -> None:
        validate_name(path)
        if path in self._entries:
            raise StorageError(Reason.RSYNC_BAD_NAME, "duplicate name", path=repr(path))
        if len(self._entries) >= self.max_entries:
            raise LimitExceeded(Reason.LIMIT, "revision too large", limit="rsync_max_tree_entries")

    def set_root_mtime(self, mtime: int) -> None:
        self._entries[b""] = Entry(b"", True, DIR_SIZE, mtime)

    def add_dir(self, path: bytes, mtime: int) -> None:
        self._check(path)
        parent = self._parent(path)
        self._entries[path] = Entry(path, True, DIR_SIZE, mtime)
        self._children[path] = []
        self._children[parent].append(path)

    def add_file(self, path: bytes, mtime: int, data: bytes) -> None:
        self._check(path)
        parent = self._parent(path)
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        self._entries[path] = Entry(path, False, len(data), mtime, digest)
        # Stored once, as what protocol >= 30 sends without -z: literal tokens + MD5.  The
        # content itself is read back out of it when needed (protocol 27, -z, -c at 27).
        self._bodies[path] = b"".join(literal_tokens(data)) + digest
        self._children[parent].append(path)

    def build(self) -> Revision:
        return Revision(
            name=self.name,
            seed=self.seed,
            entries=self._entries,
            children={k: tuple(v) for k, v in self._children.items()},
            bodies=self._bodies,
        )


def _sort_key_29(name: bytes, is_dir: bool) -> tuple[tuple[int, bytes], ...]:
    # flist.c f_name_cmp at protocol >= 29: per directory, files before subdirectories.
    if name == b".":
        return ()
    parts = name.split(b"/")
    key = [(1, p + b"/") for p in parts[:-1]]
    key.append((1, parts[-1] + b"/") if is_dir else (0, parts[-1]))
    return tuple(key)


@dataclass(slots=True)
class Revision:
    """One immutable revision of a module, shared by every session serving it."""

    name: str
    seed: int
    entries: dict[bytes, Entry]
    children: dict[bytes, tuple[bytes, ...]]
    #: path -> literal token stream + MD5 (see RevisionBuilder.add_file)
    bodies: dict[bytes, bytes]
    max_flist_cache: int = 32
    _flists: dict[FlistOptions, FileList] = field(default_factory=dict)
    _md4_sums: dict[bytes, bytes] = field(default_factory=dict)
    _md4_seeded: dict[bytes, bytes] = field(default_factory=dict)
    _deflated: dict[bytes, bytes] = field(default_factory=dict)
    _bodies: dict[tuple[bytes, bool, int, int], bytes] = field(default_factory=dict)

    @property
    def file_count(self) -> int:
        return len(self.bodies)

    @property
    def total_size(self) -> int:
        return sum(self.entries[p].size for p in self.bodies)

    # --- digests and compressed forms (deterministic, so cached) ---

    def content(self, path: bytes) -> bytes:
        """A file's bytes, read back out of its stored literal token stream."""
        body = self.bodies[path]
        size = self.entries[path].size
        if size <= LITERAL_CHUNK:
            return body[4 : 4 + size]
        view = memoryview(body)
        parts: list[memoryview] = []
        pos = 0
        while True:
            n = int.from_bytes(view[pos : pos + 4], "little")
            if n == 0:
                return b"".join(parts)
            parts.append(view[pos + 4 : pos + 4 + n])
            pos += 4 + n

    def flist_sum(self, entry: Entry, protocol: int) -> bytes:
        """The ``-c`` sum in a file list: MD5(data) at >= 30, MD4(data) at 27."""
        if protocol >= 30:
            return entry.md5
        cached = self._md4_sums.get(entry.path)
        if cached is None:
            cached = self._md4_sums[entry.path] = md4(self.content(entry.path))
        return cached

    def transfer_sum(self, entry: Entry, protocol: int, seed: int) -> bytes:
        """The whole-file checksum after the tokens: MD5(data) at >= 30; MD4(seed_le32 || data)
        at 27 (cached for the revision's own seed)."""
        if protocol >= 30:
            return entry.md5
        data = self.content(entry.path)
        if seed != self.seed:
            return md4(int32(seed) + data)
        cached = self._md4_seeded.get(entry.path)
        if cached is None:
            cached = self._md4_seeded[entry.path] = md4(int32(seed) + data)
        return cached

    def deflated(self, entry: Entry, level: int) -> bytes:
        """The ``-z`` token stream for the whole file as literal data.  Cached at the default
        level only (what RPs use): caching every level a client may ask for would let one
        client multiply the revision's memory by nine."""
        if level != DEFAULT_COMPRESS_LEVEL:
            return deflate_tokens(self.content(entry.path), level)
        cached = self._deflated.get(entry.path)
        if cached is None:
            cached = self._deflated[entry.path] = deflate_tokens(self.content(entry.path), level)
        return cached

    def response_body(self, entry: Entry, protocol: int, level: int, seed: int) -> bytes:
        """Everything sent for a file after the sum head echo: its token stream (literal, or
        deflated at ``level`` > 0) and the whole-file checksum.  Cached per revision for the
        revision's own seed (any seed at >= 30, where the checksum is unseeded)."""
        modern = protocol >= 30
        if modern and not level:
            return self.bodies[entry.path]
        key = (entry.path, modern, level, 0 if modern else seed)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        tokens = self.deflated(entry, level) if level else self.bodies[entry.path][:-16]
        body = tokens + self.transfer_sum(entry, protocol, seed)
        if (modern or seed == self.seed) and level in (0, DEFAULT_COMPRESS_LEVEL):
            self._bodies[key] = body
        return body

    # --- file lists ---

    def file_list(self, opts: FlistOptions, filters: FilterSet, filter_work: int) -> FileList:
        """The encoded list for ``opts`` (cached).  ``filter_work`` caps the pattern-matching
        work of building it (see :meth:`FilterSet.included`)."""
        cached = self._flists.get(opts)
        if cached is not None:
            return cached
        flist = self._make_file_list(opts, filters, [filter_work])
        if len(self._flists) >= self.max_flist_cache:
            self._flists.pop(next(iter(self._flists)))
        self._flists[opts] = flist
        return flist

    def _make_file_list(
        self, opts: FlistOptions, filters: FilterSet, budget: list[int] | None = None
    ) -> FileList:
        scope = opts.scope
        contents = scope == b"" or scope.endswith(b"/")
        target = scope.rstrip(b"/")
        entry = self.entries.get(target)
        if entry is None or (contents and not entry.is_dir):
            return FileList((), encode_file_list((), opts, self), missing=True)
        listed: list[ListedEntry] = []
        if entry.is_dir and contents:
            base = target + b"/" if target else b""
            listed.append(ListedEntry(b".", entry, top_dir=True))
            if opts.recursive or opts.dirs:
                self._walk(target, base, b"", opts, filters, listed, budget)
        elif entry.is_dir:
            name = target.rpartition(b"/")[2]
            if filters.included(name, True, budget) and (opts.recursive or opts.dirs):
                # flist.c send_file_list: a top-level directory is always a content dir.
                listed.append(ListedEntry(name, entry, top_dir=True))
                if opts.recursive:
                    self._walk(target, target + b"/", name + b"/", opts, filters, listed, budget)
        else:
            name = target.rpartition(b"/")[2]
            if filters.included(name, False, budget):
                listed.append(ListedEntry(name, entry))
        if opts.protocol >= 29:
            listed.sort(key=lambda e: _sort_key_29(e.name, e.entry.is_dir))
        else:
            listed.sort(key=lambda e: e.name)
        entries = tuple(listed)
        return FileList(entries, encode_file_list(entries, opts, self))

    def _walk(
        self,
        dir_path: bytes,
        strip: bytes,
        prefix: bytes,
        opts: FlistOptions,
        filters: FilterSet,
        out: list[ListedEntry],
        budget: list[int] | None,
    ) -> None:
        stack = [dir_path]
        while stack:
            current = stack.pop()
            for child in self.children[current]:
                entry = self.entries[child]
                name = prefix + child[len(strip) :]
                if not filters.included(name, entry.is_dir, budget):
                    continue
                if entry.is_dir:
                    out.append(ListedEntry(name, entry, content_dir=opts.recursive))
                    if opts.recursive:
                        stack.append(child)
                else:
                    out.append(ListedEntry(name, entry))


def encode_file_list(
    entries: tuple[ListedEntry, ...], opts: FlistOptions, revision: Revision
) -> bytes:
    """The file list bytes up to and including the end marker (rsync flist.c
    ``send_file_entry`` layout, per rsync-wire §4)."""
    out = bytearray()
    proto = opts.protocol
    last_name = b""
    last_mode = -1
    last_time = -1
    first = True
    for item in entries:
        e = item.entry
        mode = DIR_MODE if e.is_dir else FILE_MODE
        flags = 0
        if item.top_dir and e.is_dir:
            flags |= XMIT_TOP_DIR
        if mode == last_mode:
            flags |= XMIT_SAME_MODE
        if e.mtime == last_time:
            flags |= XMIT_SAME_TIME
        # uid/gid: 0 everywhere, written for the first entry only.
        if not opts.uid or not first:
            flags |= XMIT_SAME_UID
        if not opts.gid or not first:
            flags |= XMIT_SAME_GID
        name = item.name
        prefix = 0
        limit = min(len(name), len(last_name), 255)
        while prefix < limit and name[prefix] == last_name[prefix]:
            prefix += 1
        if prefix:
            flags |= XMIT_SAME_NAME
        suffix = name[prefix:]
        if proto < 30:
            flags |= XMIT_LONG_NAME
            out.append(flags)
        else:
            if len(suffix) > 255:
                flags |= XMIT_LONG_NAME
            if e.is_dir and not item.content_dir:
                flags |= XMIT_NO_CONTENT_DIR
            if flags == 0 and not e.is_dir:
                flags |= XMIT_TOP_DIR
            if flags == 0 or flags & 0xFF00:
                flags |= XMIT_EXTENDED_FLAGS
                out += bytes([flags & 0xFF, flags >> 8])
            else:
                out.append(flags)
        if prefix:
            out.append(prefix)
        if proto < 30:
            out += int32(len(suffix))
        elif flags & XMIT_LONG_NAME:
            out += varint(len(suffix))
        else:
            out.append(len(suffix))
        out += suffix
        if proto < 30:
            out += longint(e.size)
            if not flags & XMIT_SAME_TIME:
                out += int32(e.mtime)
            if not flags & XMIT_SAME_MODE:
                out += int32(mode)
            if not flags & XMIT_SAME_UID:
                out += int32(0)
            if not flags & XMIT_SAME_GID:
                out += int32(0)
            if opts.checksum:
                out += revision.flist_sum(e, proto) if not e.is_dir else b"\x00" * 16
        else:
            out += varlong(e.size, 3)
            if not flags & XMIT_SAME_TIME:
                out += varlong(e.mtime, 4)
            if not flags & XMIT_SAME_MODE:
                out += int32(mode)
            if not flags & XMIT_SAME_UID:
                out += varint(0)
            if not flags & XMIT_SAME_GID:
                out += varint(0)
            if opts.checksum and not e.is_dir:
                out += revision.flist_sum(e, proto)
        last_name, last_mode, last_time = name, mode, e.mtime
        first = False
    out.append(0)
    return bytes(out)


def deflate_tokens(data: bytes, level: int) -> bytes:
    """rsync's compressed token stream (token.c) for a file sent entirely as literal data:
    raw deflate, sync-flushed, the trailing empty stored block's ``00 00 FF FF`` removed (the
    receiver adds it back), cut into ``DEFLATED_DATA`` pieces of at most 16383 bytes, then
    ``END_FLAG``."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    body = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    if body.endswith(b"\x00\x00\xff\xff"):
        body = body[:-4]
    out = bytearray()
    for off in range(0, len(body), DEFLATE_PIECE):
        piece = body[off : off + DEFLATE_PIECE]
        out += bytes([DEFLATED_DATA | len(piece) >> 8, len(piece) & 0xFF])
        out += piece
    out.append(END_FLAG)
    return bytes(out)


def literal_tokens(data: bytes, chunk: int = LITERAL_CHUNK) -> Iterator[bytes | memoryview]:
    """The uncompressed token stream: literal runs ``int32 n`` + n bytes, then ``int32 0``."""
    view = memoryview(data)
    for off in range(0, len(data), chunk):
        piece = view[off : off + chunk]
        yield int32(len(piece))
        yield piece
    yield int32(0)


def check_scope(path: bytes) -> None:
    """Refuse a path argument (after the module name) that is not a plain relative path."""
    if path == b"":
        return
    body = path.rstrip(b"/")
    if path.endswith(b"//") or not body:
        raise RemoteProtocolError(Reason.RSYNC_PATH, "bad path", path=repr(path[:80]))
    try:
        validate_name(body)
    except StorageError as exc:
        raise RemoteProtocolError(Reason.RSYNC_PATH, exc.detail, path=repr(path[:80])) from None
    if any(c in b"*?[" for c in body):
        raise RemoteProtocolError(Reason.RSYNC_PATH, "wildcards in path", path=repr(path[:80]))
